from tests.training.conftest import tiny_head_dataset  # noqa: F401

from tests.training.conftest import tiny_combo_dataset, tiny_head_dataset  # noqa: F401

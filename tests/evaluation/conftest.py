from tests.training.conftest import (  # noqa: F401
    tiny_combo_dataset,
    tiny_head_dataset,
    tiny_val_dataset,
)

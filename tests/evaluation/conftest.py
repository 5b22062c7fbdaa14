import pytest

from tests.training.conftest import (  # noqa: F401
    tiny_combo_dataset,
    tiny_head_dataset,
    tiny_val_dataset,
)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A generated 3 x 4 x 3 set at 32 px with neutral twins and 2 mixtures per subject."""
    from gphm.data.synthetic import MakeSyntheticConfig
    from gphm.data.synthetic.generate import generate

    out = tmp_path_factory.mktemp("expr") / "ds"
    cfg = MakeSyntheticConfig(
        out=str(out), num_identities=3, num_expressions=4, num_views=3, resolution=32,
        supersample=1, mesh_frequency=12, heldout_views=1, val_views=0, mixtures_per_subject=2,
    )  # fmt: skip
    generate(cfg, progress=False)
    return out

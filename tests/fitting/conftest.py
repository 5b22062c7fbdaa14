import pytest

from gphm.models.runs import load_run
from gphm.training.trainer import GaussianTrainer, GuidanceTrainer
from tests.training.conftest import tiny_combo_dataset, tiny_head_dataset  # noqa: F401
from tests.training.test_train import _cfg


@pytest.fixture(scope="session")
def trained(tiny_head_dataset, tmp_path_factory):  # noqa: F811
    """A tiny two-stage model (32 px Gaussian head) trained briefly on the ellipsoid heads
    (shared by the fitting tests)."""
    run = tmp_path_factory.mktemp("fit") / "run"
    extra = ["stage=all", "train.guidance_steps=40", "train.gaussian_steps=40",
             "train.batch_size=2", "train.code_lr=2e-2", "train.gaussian_code_lr=1e-2"]  # fmt: skip
    cfg = _cfg(tiny_head_dataset, run, *extra)
    g = GuidanceTrainer(cfg)
    g.train()
    GaussianTrainer(cfg, guidance=g.acc.unwrap_model(g.model)).train()
    return load_run(run)

"""A tiny trained Gaussian head for the viewer tests (a few steps: the picture only has to
exist and depend on the codes), and a viewer served from a thread on a free port."""

import pytest

from gphm.models.runs import load_run
from gphm.training.trainer import GaussianTrainer, GuidanceTrainer
from gphm.viewer import Scene, ViewerServer
from tests.training.conftest import tiny_head_dataset  # noqa: F401
from tests.training.test_train import _cfg


@pytest.fixture(scope="session")
def viewer_run(tiny_head_dataset, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("viewer") / "run"
    # Codes drawn wide from the start (init_std 1): after so few steps the identities and
    # expressions still look clearly different, which is what these tests look at.
    extra = ["stage=all", "train.guidance_steps=4", "train.gaussian_steps=2",
             "train.batch_size=2", "model.guidance.identity_code.init_std=1.0",
             "model.guidance.expression_code.init_std=1.0"]  # fmt: skip
    cfg = _cfg(tiny_head_dataset, run, *extra)
    g = GuidanceTrainer(cfg)
    g.train()
    GaussianTrainer(cfg, guidance=g.acc.unwrap_model(g.model)).train()
    return run


@pytest.fixture(scope="session")
def scene(viewer_run):
    return Scene(load_run(viewer_run))


@pytest.fixture(scope="session")
def server(scene):
    with ViewerServer(scene, "127.0.0.1", 0) as s:
        yield s

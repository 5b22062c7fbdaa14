"""gphm-reenact never writes into its own inputs (issue 28 finding 17): ``out`` equal to,
holding or inside the driver's tracking folder (whose report.json and frames/ it would
overwrite) or the target avatar is refused at start, even with overwrite=true."""

import pytest

import gphm.cli.reenact as reenact_cli
from gphm.cli import UserError
from gphm.cli.reenact import ReenactConfig


@pytest.fixture
def tracking(tmp_path):
    d = tmp_path / "tracking"
    (d / "frames").mkdir(parents=True)
    (d / "tracking.json").write_text("{}")
    (d / "report.json").write_text('{"mine": 1}')
    (d / "frames" / "00000.png").write_bytes(b"input frame")
    return d


def _files(d):
    return {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def _fail_if_loaded(*args, **kwargs):
    raise AssertionError("the run was loaded: out was not checked first")


@pytest.mark.parametrize("where", ["driver", "inside", "parent"])
def test_out_on_the_drivers_tracking_folder_is_refused(tracking, tmp_path, monkeypatch, where):
    monkeypatch.setattr(reenact_cli, "load_run", _fail_if_loaded)
    out = {"driver": tracking, "inside": tracking / "frames", "parent": tmp_path}[where]
    before = _files(tracking)
    cfg = ReenactConfig(checkpoint=str(tmp_path / "run"), driver=str(tracking), target="a",
                        out=str(out), overwrite=True)  # fmt: skip
    with pytest.raises(UserError, match=r"out=.* the driver=.*choose another out"):
        reenact_cli.main(cfg)
    assert _files(tracking) == before


def test_out_holding_the_target_avatar_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(reenact_cli, "load_run", _fail_if_loaded)
    (tmp_path / "res" / "me").mkdir(parents=True)
    cfg = ReenactConfig(checkpoint=str(tmp_path / "run"), driver=str(tmp_path / "video.mp4"),
                        target=str(tmp_path / "res" / "me"), out=str(tmp_path / "res"),
                        overwrite=True)  # fmt: skip
    with pytest.raises(UserError, match=r"out=.* holds the target="):
        reenact_cli.main(cfg)


def test_out_elsewhere_goes_on_to_load_the_run(tracking, tmp_path):
    # out inside the run directory is fine (nothing of the run is replaced); a subject name
    # that happens not to be a path is no input folder
    cfg = ReenactConfig(checkpoint=str(tmp_path / "run"), driver=str(tracking), target="a",
                        out=str(tmp_path / "run" / "reenact"))  # fmt: skip
    with pytest.raises(UserError, match="no trained model"):
        reenact_cli.main(cfg)

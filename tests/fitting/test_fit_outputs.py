"""What gphm-fit may replace (issue 28 findings 1, 2, 9, 19): only an earlier fit, never
a folder of the user's files or one holding the inputs; built aside and swapped in, so a
kill leaves the earlier fit or the new one; options checked before the fit.

The fit itself is replaced by fakes (these tests are about the output folder): ``load_run``
returns a stand-in model, ``write_fit`` writes the output files."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError

import gphm.cli.fit as fit_cli
import gphm.fitting.avatar as avatar_module
from gphm.cli import UserError
from gphm.cli.fit import FIT_OUTPUTS, FitImageConfig, is_fit_dir
from gphm.errors import os_error_message
from gphm.fitting.avatar import Avatar
from tests.training.test_train import ROOT, _env


def make_fit(out: Path, tag: str) -> Path:
    """An output folder as a fit writes it, its report saying ``tag``."""
    (out / "avatar").mkdir(parents=True)
    (out / "avatar" / "avatar.json").write_text("{}")
    (out / "avatar" / "avatar.safetensors").write_bytes(b"w")
    for name in ("overlay.png", "novel_views.png", "orbit.mp4"):
        (out / name).write_bytes(tag.encode())
    (out / "report.json").write_text(json.dumps({"tag": tag}))
    return out


def fake_fit(monkeypatch, factor: int = 2, tag: str = "new") -> list[str]:
    calls: list[str] = []
    model = SimpleNamespace(upsampler=SimpleNamespace(config=SimpleNamespace(factor=factor)))
    monkeypatch.setattr(fit_cli, "load_run", lambda *a, **k: SimpleNamespace(model=model))

    def fit_photos(*args, **kwargs):
        calls.append("fit")
        return [None], SimpleNamespace(images=[None])

    def write_fit(out, cfg, *args):
        calls.append("write")
        make_fit(out, tag)
        return {"tag": tag}

    monkeypatch.setattr(fit_cli, "fit_photos", fit_photos)
    monkeypatch.setattr(fit_cli, "image_report", lambda *a, **k: {})
    monkeypatch.setattr(fit_cli, "write_fit", write_fit)
    return calls


def cfg(tmp_path: Path, out: Path, **kw) -> FitImageConfig:
    photo = kw.pop("image", tmp_path / "photo.png")
    if not Path(photo).exists():
        Path(photo).write_bytes(b"photo")
    return FitImageConfig(checkpoint=str(tmp_path / "run"), image=str(photo), out=str(out), **kw)


def test_overwrite_never_replaces_a_folder_of_user_files(tmp_path, monkeypatch):
    # finding 1: out holds the user's avatar/ folder (photos) and a document
    calls = fake_fit(monkeypatch)
    out = tmp_path / "home"
    (out / "avatar").mkdir(parents=True)
    (out / "avatar" / "holiday.jpg").write_bytes(b"jpeg")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"is not an earlier fit.*even with overwrite=true"):
        fit_cli.main(cfg(tmp_path, out, overwrite=True))
    assert calls == []  # refused before the fit, not after minutes
    assert (out / "avatar" / "holiday.jpg").read_bytes() == b"jpeg"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "photo.png"]


def test_overwrite_replaces_an_earlier_fit_as_a_whole(tmp_path, monkeypatch):
    calls = fake_fit(monkeypatch)
    out = make_fit(tmp_path / "fit", "old")
    (out / ".overlay.k2j4h1.png").write_bytes(b"stray")  # a temporary of a killed writer
    assert is_fit_dir(out)
    assert fit_cli.main(cfg(tmp_path, out, overwrite=True)) == {"tag": "new"}
    assert calls == ["fit", "write"]
    assert json.loads((out / "report.json").read_text()) == {"tag": "new"}
    assert sorted(p.name for p in out.iterdir()) == sorted(FIT_OUTPUTS)  # stray swept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "photo.png"]
    with pytest.raises(UserError, match="pass overwrite=true"):
        fit_cli.main(cfg(tmp_path, out))


def test_an_input_photo_inside_out_is_never_overwritten(tmp_path, monkeypatch):
    # finding 19: the photo is out/overlay.png, where the overlay goes
    calls = fake_fit(monkeypatch)
    out = make_fit(tmp_path / "fit", "old")
    photo = out / "overlay.png"
    photo.write_bytes(b"my photo")
    with pytest.raises(UserError, match=r"holds the input image="):
        fit_cli.main(cfg(tmp_path, out, image=photo, overwrite=True))
    assert calls == [] and photo.read_bytes() == b"my photo"
    # a checkpoint inside out would be deleted with it: refused the same way
    (out / "run").mkdir()
    with pytest.raises(UserError, match=r"holds the input checkpoint="):
        fit_cli.main(FitImageConfig(checkpoint=str(out / "run"), image=str(tmp_path / "p.png"),
                                    out=str(out), overwrite=True))  # fmt: skip


def test_output_size_is_checked_before_the_fit(tmp_path, monkeypatch):
    # finding 9: an odd size (H.264) or one the model cannot render fails at start
    with pytest.raises(ValueError, match="size must be even"):
        cfg(tmp_path, tmp_path / "a", size=17)
    calls = fake_fit(monkeypatch, factor=4)
    with pytest.raises(UserError, match=r"size=18 must be a multiple of .* factor 4"):
        fit_cli.main(cfg(tmp_path, tmp_path / "b", size=18))
    assert calls == [] and not (tmp_path / "b").exists()


KILLED_WRITER = """
import sys, time
from pathlib import Path
from types import SimpleNamespace
import gphm.cli.fit as fit_cli
tmp, out = Path(sys.argv[1]), Path(sys.argv[2])
model = SimpleNamespace(upsampler=SimpleNamespace(config=SimpleNamespace(factor=2)))
fit_cli.load_run = lambda *a, **k: SimpleNamespace(model=model)
fit_cli.fit_photos = lambda *a, **k: ([None], SimpleNamespace(images=[None]))
fit_cli.image_report = lambda *a, **k: {}
def write_fit(d, *args):
    (d / "avatar").mkdir()
    (d / "avatar" / "avatar.json").write_text("{}")
    (d / "overlay.png").write_bytes(b"half")
    (tmp / "writing").write_text(str(d))
    time.sleep(120)
fit_cli.write_fit = write_fit
fit_cli.main(fit_cli.FitImageConfig(checkpoint=str(tmp / "run"), image=str(tmp / "photo.png"),
                                    out=str(out), overwrite=True))
"""


def test_a_fit_killed_while_overwriting_leaves_the_earlier_fit(tmp_path, monkeypatch):
    # finding 2: kill -9 during overwrite=true into an earlier fit
    out = make_fit(tmp_path / "fit", "old")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "photo.png").write_bytes(b"photo")
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(out)], env=_env(),
                            cwd=ROOT, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for _ in range(1200):  # importing torch on a loaded machine: up to 2 minutes
            if (tmp_path / "writing").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert (tmp_path / "writing").exists(), proc.stderr.read().decode()[-2000:]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the earlier fit, whole, not mixed with the new one
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".fit.")]
    assert len(leftovers) == 1  # the killed writer's temporary, beside out
    # the next run replaces the earlier fit and sweeps the killed writer's temporary
    fake_fit(monkeypatch)
    fit_cli.main(cfg(tmp_path, out, overwrite=True))
    assert json.loads((out / "report.json").read_text()) == {"tag": "new"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".fit.")]


def _disk_full(*args, **kwargs):
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                          'message: "No space left on device" })')  # fmt: skip


def test_disk_full_writing_an_avatar_is_an_oserror_naming_it(tmp_path, monkeypatch):
    # finding 8: safetensors' SafetensorError on a full disk, the old avatar untouched
    avatar = Avatar(checkpoint="run", model_class="GaussianHead", z_id=torch.zeros(4),
                    z_exp=torch.ones(3), head_R=torch.eye(3), head_T=torch.zeros(3),
                    head_scale=1.0, K=torch.eye(3), image_size=32)  # fmt: skip
    d = avatar.save(tmp_path / "avatar")
    before = (d / "avatar.safetensors").read_bytes()
    monkeypatch.setattr(avatar_module, "save_file", _disk_full)
    with pytest.raises(OSError) as err:
        avatar.save(d, overwrite=True)
    assert err.value.errno == errno.ENOSPC
    assert os_error_message(err.value) == (
        f"disk full while writing {d}; free some space and run again"
    )
    assert (d / "avatar.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avatar"]


def test_disk_full_during_the_fit_outputs_is_one_line(tmp_path, monkeypatch, capsys):
    fake_fit(monkeypatch)
    monkeypatch.setattr(fit_cli, "write_fit", lambda out, *a: _disk_full())
    (tmp_path / "photo.png").write_bytes(b"photo")
    out = tmp_path / "fit"
    status = fit_cli.cli([f"checkpoint={tmp_path / 'run'}", f"image={tmp_path / 'photo.png'}",
                          f"out={out}"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert f"error: disk full while writing {out}; free some space and run again" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


@pytest.fixture(scope="module")
def tiny_run(tiny_head_dataset, tmp_path_factory):
    """A run trained a few steps: enough for a real fit to write real outputs."""
    from gphm.training.trainer import GaussianTrainer, GuidanceTrainer
    from tests.training.test_train import _cfg

    run = tmp_path_factory.mktemp("fitout") / "run"
    cfg = _cfg(tiny_head_dataset, run, "stage=all", "train.guidance_steps=2",
               "train.gaussian_steps=2", "train.batch_size=2")  # fmt: skip
    g = GuidanceTrainer(cfg)
    g.train()
    GaussianTrainer(cfg, guidance=g.acc.unwrap_model(g.model)).train()
    return run


def test_a_real_fit_replaces_its_earlier_fit_and_nothing_else(tiny_run, tiny_head_dataset,
                                                              tmp_path):  # fmt: skip
    import numpy as np
    from PIL import Image

    from gphm.data.loaders import HeadDataset
    from gphm.geometry.cameras import project_points

    item = HeadDataset(tiny_head_dataset, split="train", lr_size=16)[3]
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    Image.fromarray((item.image.numpy() * 255).round().astype(np.uint8)).save(photo)
    uv, _ = project_points(item.landmarks_3d, item.viewmat, item.K)
    rows = "\n".join(f"{u:.3f} {v:.3f}" for u, v in uv.tolist())
    pts = tmp_path / "in" / "photo.pts"
    pts.write_text(f"version: 1\nn_points: {len(uv)}\n{{\n{rows}\n}}\n")
    out = tmp_path / "fit"

    def fit(**kw):
        return fit_cli.main(FitImageConfig(
            checkpoint=str(tiny_run), image=str(photo), landmarks=str(pts), out=str(out),
            views=1, frames=2, size=32, device="cpu",
            fit=fit_cli.FitConfig(phase1_steps=2, phase2_steps=1), **kw))  # fmt: skip

    first = fit()
    assert is_fit_dir(out) and sorted(p.name for p in out.iterdir()) == sorted(FIT_OUTPUTS)
    written = json.loads((out / "report.json").read_text())
    # The collapse guard's record: coverage after phase 1 per image, and its recoveries.
    assert len(written["coverage_phase1"]) == 1 and 0 <= written["coverage_phase1"][0] <= 1
    assert written["recoveries"] == first["recoveries"] and isinstance(first["recoveries"], list)
    assert Avatar.load(out / "avatar").image_size == first["aligned_size"]
    with pytest.raises(UserError, match="pass overwrite=true"):
        fit()
    (out / "report.json").write_text(json.dumps({"earlier": True}))
    fit(overwrite=True)
    assert "earlier" not in json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "in"]  # no temporaries
    (out / "notes.txt").write_text("mine")  # now a folder with a file of the user's
    with pytest.raises(UserError, match="is not an earlier fit"):
        fit(overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_an_out_that_cannot_be_swapped_is_refused_before_the_fit(tmp_path, monkeypatch):
    calls = fake_fit(monkeypatch)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(UserError, match=r"cannot replace .*current directory"):
        fit_cli.main(cfg(tmp_path, Path(".")))
    assert calls == [] and list(here.iterdir()) == []

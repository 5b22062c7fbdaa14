"""Every command checks its size-like options against the memory and time budgets
(gphm.io.limits) before any work: exit status 2 and one line naming the option, the
estimate, the limit and the override (GPHM_MEMORY_LIMIT / GPHM_TIME_LIMIT). The refusals
happen while the config is validated, so these tests read no model and write nothing."""

from __future__ import annotations

import importlib
import re

import pytest

from gphm.io import limits

TIME_HINT = r"the limit is 2\.0 h \(set GPHM_TIME_LIMIT, e\.g\. GPHM_TIME_LIMIT=48h or " \
            r"GPHM_TIME_LIMIT=none, to allow it\)"  # fmt: skip
MEMORY_HINT = r"the limit is 8\.0 GB \(set GPHM_MEMORY_LIMIT to change it\)"


@pytest.fixture(autouse=True)
def _budgets(monkeypatch):
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "8G")
    monkeypatch.setenv("GPHM_TIME_LIMIT", "2h")


def _run(command: str, args: list[str], capsys) -> tuple[int, str]:
    module = importlib.import_module(f"gphm.cli.{command}")
    code = module.cli(args)
    err = capsys.readouterr().err.strip()
    return code, err


def _refused(command, args, capsys, pattern):
    code, err = _run(command, args, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert re.search(pattern, err), err
    return err


TRAIN = ["data.path=/nonexistent", "run_dir=/nonexistent/run", "device=cpu"]


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "option, pattern",
    [
        ("model.gaussian.num_points=1000000000",
         rf"model\.gaussian\.num_points=1000000000 .*would need 4\d\d\.\d GB; {MEMORY_HINT}"),
        ("model.guidance.tet_resolution=5000",
         rf"model\.guidance\.tet_resolution=5000 .*would need 45\.5 TB; {MEMORY_HINT}"),
        ("model.lr_size=8192",
         r"train\.batch_size=4 at model\.lr_size=8192 \(8192 px\) .*would need \d\d\.\d GB"),
        ("train.batch_size=100000",
         r"train\.batch_size=100000 at model\.lr_size=128 \(128 px\) .*would need .* GB"),
        ("train.guidance_steps=10000000",
         rf"train\.guidance_steps=10000000, .* would take about \d+\.\d days of work on the "
         rf"CPU \(estimated\); {TIME_HINT}"),
        ("train.gaussian_steps=10000000", r"train\.gaussian_steps=10000000.*days of work"),
    ],
)  # fmt: skip
def test_training_sizes_and_steps_over_budget_are_refused(option, pattern, capsys):
    _refused("train", [*TRAIN, option], capsys, pattern)


def test_training_time_budget_depends_on_the_device_and_can_be_lifted(monkeypatch):
    from gphm.config import parse_config
    from gphm.training.config import TrainRunConfig, check_training_time

    tiny = parse_config(TrainRunConfig, TRAIN[:2])
    check_training_time(tiny, "cpu")  # the defaults fit
    paper = parse_config(TrainRunConfig, [*TRAIN[:2], "model=paper"])  # a valid config...
    with pytest.raises(ValueError, match=r"model\.guidance\.tet_resolution=128.* would take "
                       r"about \d\.\d h of work on the CPU"):  # fmt: skip
        check_training_time(paper, "cpu")  # ...too slow on a CPU
    check_training_time(paper, "cuda")
    long = parse_config(TrainRunConfig, [*TRAIN[:2], "train.guidance_steps=100000"])
    with pytest.raises(ValueError, match="GPHM_TIME_LIMIT"):
        check_training_time(long, "cpu")
    monkeypatch.setenv("GPHM_TIME_LIMIT", "none")
    check_training_time(long, "cpu")


@pytest.mark.parametrize(
    "option, pattern",
    [
        ("train.lr=1e30", r"train\.lr must be in \[0, 1\] .*got 1e\+30"),
        ("train.code_lr=5", r"train\.code_lr must be in \[0, 1\]"),
        ("train.sdf_prefit_lr=-1", r"train\.sdf_prefit_lr must be in \[0, 1\]"),
        ("train.lr=nan", r"train\.lr: must be a finite number"),
        ("loss.rgb_hr=-1", r"loss\.rgb_hr must be >= 0 \(a loss weight; 0 turns the term off\)"),
        ("loss.gaussian.perceptual=-0.5", r"loss\.gaussian\.perceptual must be >= 0"),
        ("train.keep_checkpoints=-1", r"train\.keep_checkpoints must be >= 0 \(0 keeps all\)"),
    ],
)
def test_training_options_out_of_range_are_refused(option, pattern, capsys):
    _refused("train", [*TRAIN, option], capsys, pattern)


# ----------------------------------------------------------------------------- commands


def test_render_frames_and_size(capsys, monkeypatch):
    base = ["checkpoint=/nonexistent", "out=/nonexistent/out", "device=cpu"]
    _refused("render", [*base, "frames=100000"], capsys,
             r"frames=100000 at size=256 .*would need .* GB; the limit is 8\.0 GB")  # fmt: skip
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "1T")  # the time budget then
    _refused("render", [*base, "frames=100000"], capsys,
             rf"frames=100000 at size=256 \(100000 renders\) would take about 2\.\d h of work "
             rf"on the CPU \(estimated\); {TIME_HINT}")  # fmt: skip
    _refused("render", [*base, "size=100000"], capsys, r"size=100000 .*would need 1\.2 TB")


def test_edit_steps_between_and_drive_labels(capsys, monkeypatch):
    base = ["checkpoint=/nonexistent", "source=a", "target=b", "out=/nonexistent/out",
            "device=cpu"]  # fmt: skip
    _refused("edit", [*base, "steps_between=100000"], capsys,
             r"steps_between=100000 at size=256 .*would need .* GB")  # fmt: skip
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "1T")
    _refused("edit", [*base, "steps_between=20000", "drive=[a,b,c,d,e]"], capsys,
             rf"steps_between=20000 x 5 drive labels at size=256 \(100006 renders\) would "
             rf"take .*{TIME_HINT}")  # fmt: skip


def test_synth_dataset_size(capsys, tmp_path):
    out = f"out={tmp_path / 'data'}"
    _refused("synth", [out, "num_identities=100000"], capsys,
             rf"num_identities=100000 x num_expressions=8 x num_views=9 \(7200000 images at "
             rf"resolution=128, supersample=2\) would take about .* days .*{TIME_HINT}")
    _refused("synth", [out, "mode=sequence", "num_frames=10000", "num_identities=50"], capsys,
             r"num_identities=50 x num_frames=10000 x num_views=9 \(4500000 images")  # fmt: skip
    assert not (tmp_path / "data").exists()


def test_synth_disk_budget(tmp_path, monkeypatch):
    from gphm.data.synthetic.config import MakeSyntheticConfig

    monkeypatch.setenv("GPHM_TIME_LIMIT", "none")
    monkeypatch.setattr(limits, "_free_bytes", lambda path: 10 << 20)  # 10 MB free
    with pytest.raises(ValueError, match=r"\(576 images at resolution=256\) would need about "
                       r"36\.0 MB on disk; 10\.0 MB are free at "):  # fmt: skip
        MakeSyntheticConfig(out=str(tmp_path / "d"), resolution=256)
    MakeSyntheticConfig(out=str(tmp_path / "d"), resolution=128, num_identities=2)  # 4.5 MB


def test_fit_steps_and_outputs(capsys):
    base = ["checkpoint=/nonexistent", "image=/nonexistent.png", "out=/nonexistent/out",
            "device=cpu"]  # fmt: skip
    _refused("fit", [*base, "fit.phase2_steps=100000"], capsys,
             rf"fit\.phase1_steps \+ fit\.phase2_steps = 100110 would take .*{TIME_HINT}")
    _refused("fit", [*base, "frames=100000"], capsys,
             r"frames=100000 \+ views=8 at size=256 .*would need .* GB")  # fmt: skip


def test_track_steps_and_frames(capsys):
    base = ["checkpoint=/nonexistent", "video=/nonexistent.mp4", "out=/nonexistent/out",
            "device=cpu"]  # fmt: skip
    _refused("track", [*base, "max_frames=100000", "track.steps=10"], capsys,
             rf"max_frames=100000 with track\.steps=10, track\.landmark_steps=\d+, "
             rf"track\.render_size=64 would take .*{TIME_HINT}")  # fmt: skip
    _refused("track", [*base, "track.steps=1000000"], capsys,
             r"track\.steps=1000000, .* per frame would take")  # fmt: skip
    _refused("track", [*base, "track.render_size=100000"], capsys,
             r"track\.render_size=100000 .*would need")  # fmt: skip


def test_export_fidelity_size(capsys):
    base = ["checkpoint=/nonexistent", "subject=0", "out=/nonexistent/out"]
    _refused("export", [*base, "fidelity_size=100000"], capsys,
             r"size=100000 .*would need 1\.2 TB")  # fmt: skip
    _refused("export", [*base, "fidelity_size=1024", "fidelity_views=100000"], capsys,
             r"fidelity_views=100000 at size=1024 .*would need")  # fmt: skip


def test_small_options_pass_validation(tmp_path):
    """The default options of every command fit (the refusals above are the sizes)."""
    from gphm.cli.edit import EditConfig
    from gphm.cli.fit import FitImageConfig
    from gphm.cli.render import RenderConfig
    from gphm.cli.track import TrackVideoConfig
    from gphm.data.synthetic.config import MakeSyntheticConfig

    RenderConfig(checkpoint="r", out="o", device="cpu")
    EditConfig(checkpoint="r", source="a", target="b", out="o", device="cpu")
    FitImageConfig(checkpoint="r", image="i.png", out="o", device="cpu")
    TrackVideoConfig(checkpoint="r", video="v.mp4", out="o", device="cpu", max_frames=300)
    MakeSyntheticConfig(out=str(tmp_path / "d"))

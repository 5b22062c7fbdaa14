"""The rendering/fitting CLIs refuse to write into a non-empty ``out`` unless
``overwrite=true``, and refuse sizes that cannot fit in memory, before any work."""

import importlib
from pathlib import Path

import pytest

from gphm.cli import UserError, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _script(name):
    """The command module behind scripts/<name>.py (monkeypatched below, so not the shim)."""
    commands = {"render": "render", "fit_image": "fit", "edit_expression": "edit"}
    return importlib.import_module(f"gphm.cli.{commands[name]}")


@pytest.fixture
def used_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    return out


def _configs(out):
    render, fit, edit = _script("render"), _script("fit_image"), _script("edit_expression")
    return [
        (render, render.RenderConfig(checkpoint="no-such-run", out=str(out))),
        (fit, fit.FitImageConfig(checkpoint="no-such-run", image="x.png", out=str(out))),
        (edit, edit.EditConfig(checkpoint="no-such-run", source="a", target="b", out=str(out))),
    ]


def test_non_empty_out_is_refused_unless_overwrite(used_out, monkeypatch, capsys):
    for module, cfg in _configs(used_out):
        if module.__name__ == "gphm.cli.edit":  # resolves its sources first
            monkeypatch.setattr(module, "load_run", lambda path, **kw: None)
            monkeypatch.setattr(module, "resolve_source", lambda *a, **k: None)
            monkeypatch.setattr(module, "drive_keyframes", lambda *a, **k: ([], [], None))
        with pytest.raises(UserError) as info:
            module.main(cfg)
        assert str(info.value) == (
            f"out={used_out} is not empty; pass overwrite=true to write into it "
            "(files with the same names are replaced)"
        ), module.__name__
        cfg.overwrite = True  # now the checkpoint is what fails
        if module.__name__ == "gphm.cli.fit":  # replaces out whole: only an earlier fit
            with pytest.raises(UserError, match="is not an earlier fit"):
                module.main(cfg)
        elif module.__name__ != "gphm.cli.edit":
            with pytest.raises(UserError, match="no-such-run"):
                module.main(cfg)
    assert (used_out / "mine.txt").read_text() == "user data"
    render = _script("render")
    argv = ["checkpoint=no-such-run", f"out={used_out}"]
    assert run_cli(render.RenderConfig, render.main, argv=argv) == 2
    assert "pass overwrite=true" in capsys.readouterr().err


def test_out_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("user data")
    module, cfg = _configs(tmp_path / "f")[0]
    cfg.overwrite = True
    with pytest.raises(UserError, match=r"out=.*f is a file; expected a directory"):
        module.main(cfg)
    assert (tmp_path / "f").read_text() == "user data"


@pytest.mark.parametrize("name", ["render", "fit_image", "edit_expression"])
def test_huge_size_is_refused_at_start(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "4G")
    module = _script(name)
    schema = {"render": "RenderConfig", "fit_image": "FitImageConfig",
              "edit_expression": "EditConfig"}[name]  # fmt: skip
    argv = ["checkpoint=run", f"out={tmp_path / 'o'}", "size=100000", "source=a", "target=b",
            "image=x.png"]  # fmt: skip
    argv = [a for a in argv if a.split("=")[0] in module.__dict__[schema].__dataclass_fields__]
    assert run_cli(getattr(module, schema), module.main, argv=argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "size=100000 (1 32-channel 100000x100000 image) would need 1.2 TB; the limit is " in err
    assert not (tmp_path / "o").exists()

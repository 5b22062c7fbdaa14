"""The importer registry: ``gphm-import layout=auto|nersemble`` picks an importer module."""

import json

import pytest

from gphm.data import importers
from gphm.data.importers import CaptureError, ImportOptions, detect_layout, import_capture
from tests.data.test_importer import CAMS, FRAMES, _cli, make_capture


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap") / "subject_031"
    make_capture(root)
    return root


def test_registry_lists_nersemble_and_detects_it(capture, tmp_path):
    assert importers.layouts() == ["nersemble"]
    assert detect_layout(capture) == "nersemble"
    (tmp_path / "images/0000").mkdir(parents=True)  # no cameras/: not NeRSemble
    with pytest.raises(CaptureError, match=r"^not a capture layout gphm knows; known layouts: "
                                           r"nersemble \(images/FRAME/image_CAM.jpg"):  # fmt: skip
        detect_layout(tmp_path)
    with pytest.raises(CaptureError, match="capture folder not found"):
        detect_layout(tmp_path / "nothing")


def test_auto_and_named_layouts_import_the_same_dataset(capture, tmp_path):
    opts = ImportOptions(lr_size=24)
    auto = import_capture(capture, tmp_path / "a", "auto", opts)
    named = import_capture(capture, tmp_path / "b", "nersemble", opts)
    assert auto["layout"] == named["layout"] == "nersemble"
    assert auto["rows"] == named["rows"] == len(CAMS) * len(FRAMES)
    a, b = (json.loads((tmp_path / d / "meta.json").read_text()) for d in "ab")
    assert a["frames"] == b["frames"] and a["cameras"] == b["cameras"]
    with pytest.raises(ValueError, match="layout must be auto or one of nersemble, got 'colmap'"):
        import_capture(capture, tmp_path / "c", "colmap", opts)
    assert not (tmp_path / "c").exists()


def test_a_second_importer_is_a_module_in_the_registry(capture, tmp_path, monkeypatch):
    """A new layout is a module with IMPORTER listed in IMPORTER_MODULES: no new command."""
    import sys
    import types

    from gphm.data.importers.common import Importer

    calls = []
    fake = types.ModuleType("gphm.data.importers._fake")
    fake.IMPORTER = Importer(
        name="fake", detect=lambda src: (src / "fake.txt").is_file(),
        run=lambda src, out, opts, overwrite: calls.append(src) or {"rows": 0},
        description="fake.txt",
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "gphm.data.importers._fake", fake)
    monkeypatch.setattr(importers, "IMPORTER_MODULES", ("nersemble", "_fake"))
    assert importers.layouts() == ["nersemble", "fake"]
    (tmp_path / "fake.txt").write_text("x")
    assert import_capture(tmp_path, tmp_path / "out") == {"rows": 0, "layout": "fake"}
    assert calls == [tmp_path] and detect_layout(capture) == "nersemble"


def test_cli_layout_option(capture, tmp_path, capsys):
    cli = _cli()
    argv = [f"src={capture}", f"out={tmp_path / 'ds'}", "lr_size=24", "layout=nersemble"]
    assert cli.run_cli(cli.ImportConfig, cli.main, argv=argv, summary=cli.summary) == 0
    assert json.loads((tmp_path / "ds/import_report.json").read_text())["layout"] == "nersemble"
    capsys.readouterr()
    bad = [f"src={capture}", f"out={tmp_path / 'x'}", "layout=colmap"]
    assert cli.run_cli(cli.ImportConfig, cli.main, argv=bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layout must be auto or one of nersemble, got 'colmap'" in err
    (tmp_path / "empty").mkdir()
    bad = [f"src={tmp_path / 'empty'}", f"out={tmp_path / 'x'}"]
    assert cli.run_cli(cli.ImportConfig, cli.main, argv=bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty: not a capture layout gphm knows; known" in err
    assert not (tmp_path / "x").exists()

"""run_cli's one-line messages for the user's environment: full disks, permissions,
mis-quoted paths (gphm.errors)."""

import errno
import os
from dataclasses import dataclass

import pytest

from gphm.cli import run_cli
from gphm.errors import os_error_message, override_syntax_hint, split_argument_hint
from gphm.io.atomic import atomic_write_text


@dataclass
class OutConfig:
    out: str = "x"
    size: int = 3


def _run(capsys, main, argv):
    code = run_cli(OutConfig, main, argv=argv)
    err = capsys.readouterr().err
    return code, err


def test_disk_full_names_the_file(tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)

    def main(cfg):
        atomic_write_text(tmp_path / cfg.out / "report.json", "{}")
        return {}

    code, err = _run(capsys, main, ["out=run"])
    assert code == 2
    assert err.endswith(
        f": error: disk full while writing {tmp_path / 'run' / 'report.json'}; "
        "free some space and run again\n"
    )
    assert err.count("\n") == 1
    assert os.listdir(tmp_path / "run") == []  # the temporary file is gone too


def test_os_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("a file")

    def main(cfg):
        atomic_write_text(tmp_path / "f" / "report.json", "{}")
        return {}

    code, err = _run(capsys, main, ["out=x"])
    assert code == 2 and err.count("\n") == 1
    assert err.endswith(f": error: {tmp_path / 'f'}: file exists\n")  # mkdir of the parent
    assert os_error_message(PermissionError(errno.EACCES, "Permission denied", "/a")) == (
        "/a: permission denied"
    )
    assert os_error_message(FileExistsError("out=x is not empty")) == "out=x is not empty"


def test_unquoted_path_with_spaces(capsys):
    code, err = _run(capsys, lambda cfg: {}, ["out=my", "results", "dir", "size=4"])
    assert code == 2
    assert err.rstrip().endswith(
        "'results' is not key=value: if it is the rest of out= (a path with spaces), "
        "quote it: out=\"my results dir\" or 'out=my results dir'"
    )
    assert split_argument_hint(["out=a b", "size=3"]) is None
    assert split_argument_hint(["dir"]) == "expected key=value arguments, got 'dir'"


@pytest.mark.parametrize("value", ["résumé", "a,b", "run[1]"])
def test_unquoted_special_values_get_a_quoting_hint(capsys, value):
    code, err = _run(capsys, lambda cfg: {}, [f"out={value}"])
    assert code == 2 and err.count("\n") == 1
    assert f"quote it twice, for the shell and for hydra: 'out=\"{value}\"'" in err
    seen = {}

    def main(cfg):
        seen["out"] = cfg.out
        return {}

    assert run_cli(OutConfig, main, argv=[f'out="{value}"']) == 0  # the advice works
    assert seen["out"] == value
    assert override_syntax_hint("some other error", [f"out={value}"]) is None

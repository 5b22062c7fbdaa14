import json
from dataclasses import dataclass, field

import pytest
from omegaconf import MISSING

from gphm.cli import UserError, parse_config, run_cli, write_report


@dataclass
class _Inner:
    width: int = 4


@dataclass
class _Schema:
    out: str = MISSING
    count: int = 3
    inner: _Inner = field(default_factory=_Inner)

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")


def test_overrides_and_nested():
    cfg = parse_config(_Schema, ["out=x", "count=5", "inner.width=7"])
    assert isinstance(cfg, _Schema) and isinstance(cfg.inner, _Inner)
    assert (cfg.out, cfg.count, cfg.inner.width) == ("x", 5, 7)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["out=x", "cuont=2"], r"unknown option 'cuont'. Did you mean count"),
        (["out=x", "inner.wdth=2"], r"unknown option 'inner.wdth'"),
        (["count=2"], r"missing required option out"),
        (["out=x", "count=0"], r"count must be >= 1, got 0"),
        (["out=x", "count=abc"], r"option count: .*abc"),
        (["out"], r"expected key=value"),
    ],
)
def test_bad_input_messages(argv, match):
    with pytest.raises(UserError, match=match):
        parse_config(_Schema, argv)


def test_run_cli_exit_codes_and_summary(capsys, tmp_path):
    def main(cfg):
        return {"out": cfg.out, "count": cfg.count}

    assert run_cli(_Schema, main, ["out=a"], summary=lambda r: f"done {r['out']}") == 0
    assert capsys.readouterr().out.strip() == "done a"
    assert run_cli(_Schema, main, ["count=2"]) == 2
    assert "missing required option out" in capsys.readouterr().err
    write_report(tmp_path / "r.json", {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1, 2], "b": 1}


def test_gphm_cli_reexports_the_plumbing_it_no_longer_owns():
    """Scripts written against gphm.cli keep working; the package itself imports the
    plumbing from its homes (tests/test_layering.py)."""
    import gphm.cli as cli
    import gphm.config
    import gphm.errors
    import gphm.io.jsonfile

    for name in ("compose_config", "parse_config", "register_config", "config_dirs",
                 "SHIPPED_CONFIGS", "CONFIG_PATH_ENV"):  # fmt: skip
        assert getattr(cli, name) is getattr(gphm.config, name), name
    assert cli.UserError is gphm.errors.UserError
    assert cli.write_report is gphm.io.jsonfile.write_report

"""The shipped YAML presets (configs/ = gphm/configs): composition, validation, search path."""

import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from gphm.cli import SHIPPED_CONFIGS, UserError, compose_config, parse_config, run_cli
from gphm.training.config import TrainRunConfig, model_preset, paper_model, tiny_model

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ["data.path=DATA", "run_dir=RUN"]

# The values tiny_model() / paper_model() built in Python before the presets moved to
# configs/model/*.yaml (captured from those functions at commit 1e36be4); since then the
# tiny preset renders at the full 128 px (lr_size 128, upsampler factor 1).
_MLP = {"skips": [], "activation": "relu", "zero_init_last": False}
_COMMON = {
    "guidance.grid_bound": 1.0,
    "guidance.max_grid_offset": 0.5,
    "guidance.positional_encoding.num_frequencies": 6,
    "guidance.positional_encoding.include_input": True,
    "guidance.f_mean.activation": "softplus",
    "guidance.f_mean.zero_init_last": False,
    "guidance.identity_code.dim": 32,
    "guidance.expression_code.dim": 32,
    "guidance.color_channels": 32,
    "guidance.num_landmarks": 68,
    "guidance.upsampler.factor": 2,
    "guidance.sdf_chunk": 262144,
    "gaussian.init_opacity": 0.1,
    "gaussian.init_scale_factor": 1.0,
    "gaussian.antialiased": False,
}


def _mlps(width, depth):
    out = {}
    for name, zero in (("f_inj", False), ("f_id", True), ("f_exp", True), ("f_col", False)):
        out |= {f"guidance.{name}.{k}": v for k, v in _MLP.items()}
        out |= {f"guidance.{name}.width": width, f"guidance.{name}.depth": depth}
        out[f"guidance.{name}.zero_init_last"] = zero
    out |= {f"gaussian.f_att.{k}": v for k, v in _MLP.items()}
    out |= {"gaussian.f_att.width": width, "gaussian.f_att.depth": depth}
    out["gaussian.f_att.zero_init_last"] = True
    return out


OLD_PRESETS = {
    "tiny": _COMMON
    | _mlps(64, 2)
    | {
        "name": "tiny",
        "lr_size": 128,
        "guidance.upsampler.factor": 1,
        "guidance.tet_resolution": 32,
        "guidance.f_mean.width": 64,
        "guidance.f_mean.depth": 3,
        "guidance.f_mean.skips": [],
        "guidance.mean_feature_dim": 16,
        "guidance.identity_code.init_std": 0.05,
        "guidance.expression_code.init_std": 0.05,
        "guidance.injected_dim": 32,
        "guidance.upsampler.width": 32,
        "guidance.upsampler.blocks": 1,
        "gaussian.num_points": 0,
        "gaussian.eps2d": 0.1,
    },
    "paper": _COMMON
    | _mlps(256, 3)
    | {
        "name": "paper",
        "lr_size": 256,
        "guidance.tet_resolution": 128,
        "guidance.f_mean.width": 256,
        "guidance.f_mean.depth": 6,
        "guidance.f_mean.skips": [3],
        "guidance.mean_feature_dim": 64,
        "guidance.identity_code.init_std": 0.01,
        "guidance.expression_code.init_std": 0.01,
        "guidance.injected_dim": 128,
        "guidance.upsampler.width": 64,
        "guidance.upsampler.blocks": 3,
        "gaussian.num_points": 100000,
        "gaussian.eps2d": 0.3,
    },
}


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[prefix + k] = v
    return out


def _script_schema(root_yaml: Path):
    """Import scripts/<stem>.py and return the schema its root YAML names."""
    schema_name = yaml.safe_load(root_yaml.read_text())["defaults"][0]
    spec = importlib.util.spec_from_file_location(
        f"_cfgtest_{root_yaml.stem}", ROOT / "scripts" / f"{root_yaml.stem}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through it
    spec.loader.exec_module(module)
    return getattr(module, schema_name)


ROOT_YAMLS = sorted(SHIPPED_CONFIGS.glob("*.yaml"))


def test_top_level_configs_is_the_shipped_folder():
    assert (ROOT / "configs").resolve() == SHIPPED_CONFIGS
    assert {p.stem for p in ROOT_YAMLS} >= {
        "train", "evaluate", "fit_image", "render", "edit_expression", "make_synthetic",
        "preprocess", "import_capture",
    }  # fmt: skip
    # every command (gphm/cli/*.py, and scripts not moved there yet) has a root config
    # whose defaults list names its schema
    sources = [*(ROOT / "scripts").glob("*.py"), *(ROOT / "gphm/cli").glob("*.py")]
    schemas = {m for p in sources for m in re.findall(r"run_cli\(\s*(\w+),", p.read_text())}
    schemas.discard("schema")  # run_cli's own signature
    roots = {yaml.safe_load(p.read_text())["defaults"][0] for p in ROOT_YAMLS}
    assert len(schemas) >= 10 and schemas <= roots, schemas - roots


@pytest.mark.parametrize("root_yaml", ROOT_YAMLS, ids=lambda p: p.stem)
def test_every_root_yaml_composes_against_its_script_schema(root_yaml):
    schema = _script_schema(root_yaml)
    cfg = compose_config(schema, [])
    # nothing beyond the schema's keys, and the schema's defaults where the YAML is silent
    structured = OmegaConf.structured(schema)
    assert set(cfg.keys()) == {f.name for f in dataclasses.fields(schema)} - {"defaults"}
    node = yaml.safe_load(root_yaml.read_text())
    for key in set(cfg.keys()) - set(node) - {"model"}:
        assert OmegaConf.to_container(cfg)[key] == OmegaConf.to_container(structured)[key], key


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_model_presets_give_the_old_python_values(name):
    cfg = parse_config(TrainRunConfig, [*REQUIRED, f"model={name}"])
    got = _flat(OmegaConf.to_container(OmegaConf.structured(cfg.model)))
    expected = OLD_PRESETS[name]
    assert {k: got.get(k) for k in expected} == expected
    assert model_preset(name) == cfg.model
    assert (tiny_model() if name == "tiny" else paper_model()) == cfg.model


def test_train_defaults_are_model_tiny_and_stage_all():
    cfg = parse_config(TrainRunConfig, REQUIRED)
    assert cfg.stage == "all" and cfg.model == tiny_model()
    for stage in ("guidance", "gaussian"):
        assert parse_config(TrainRunConfig, [*REQUIRED, f"stage={stage}"]).stage == stage


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_preset_dropped_in_a_config_dir_is_selectable(tmp_path, monkeypatch):
    _write(tmp_path / "model/wide.yaml", "defaults: [tiny, _self_]\nname: wide\nlr_size: 32\n")
    cfg = parse_config(TrainRunConfig, [*REQUIRED, "model=wide", f"config_dir={tmp_path}"])
    assert (cfg.model.name, cfg.model.lr_size) == ("wide", 32)
    assert cfg.model.guidance.tet_resolution == 32  # the rest from the shipped tiny
    # the user's folder comes first: its tiny.yaml overrides the shipped one
    _write(tmp_path / "model/tiny.yaml", "defaults: [paper, _self_]\nname: tiny\n")
    shadowed = parse_config(TrainRunConfig, [*REQUIRED, f"config_dir={tmp_path}"])
    assert (shadowed.model.name, shadowed.model.lr_size) == ("tiny", 256)
    (tmp_path / "model/tiny.yaml").unlink()
    monkeypatch.setenv("GPHM_CONFIG_PATH", str(tmp_path))
    assert model_preset("wide").lr_size == 32
    with pytest.raises(UserError, match="model=huge is not a known preset; .*paper, tiny, wide"):
        parse_config(TrainRunConfig, [*REQUIRED, "model=huge"])
    monkeypatch.setenv("GPHM_CONFIG_PATH", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="GPHM_CONFIG_PATH: config folder .*nope not found"):
        parse_config(TrainRunConfig, REQUIRED)


@pytest.mark.parametrize(
    "file, text, match",
    [
        ("model/mine.yaml", "defaults: [tiny, _self_]\nguidance:\n  f_mean:\n    widht: 3\n",
         r"model/mine.yaml: unknown key 'guidance.f_mean.widht' \(did you mean "
         r"guidance.f_mean.width\?\)"),
        ("model/mine.yaml", "lr_sise: 32\n", r"model/mine.yaml: unknown key 'lr_sise' \(did you "
         r"mean lr_size\?\)"),
        ("model/mine.yaml", "lr_size: big\n", r"model/mine.yaml: lr_size: Value 'big'"),
        ("train.yaml", "defaults: [TrainRunConfig\n", r"train.yaml: not valid YAML"),
        ("model/mine.yaml", "lr_size: [1\n", r"model/mine.yaml: not valid YAML \(.*line 2\)"),
        ("train.yaml", "defaults: [TrainRunConfig, {model: mine}, _self_]\nsed: 1\n",
         r"train.yaml: unknown key 'sed' \(did you mean seed\?\)"),
    ],
)  # fmt: skip
def test_a_typo_in_a_yaml_names_the_file_and_the_key(tmp_path, file, text, match):
    _write(tmp_path / "model/mine.yaml", "name: mine\n")
    path = _write(tmp_path / file, text)
    with pytest.raises(UserError, match=match) as err:
        parse_config(TrainRunConfig, [*REQUIRED, "model=mine", f"config_dir={tmp_path}"])
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "override", ["train.lr=nan", "train.lr=inf", "loss.gaussian.rgb_hr=-inf", "model.guidance"
                 ".grid_bound=NaN", "train.sdf_prefit_radius=1e400"],
)  # fmt: skip
def test_non_finite_floats_are_refused(override):
    key, value = override.split("=")
    with pytest.raises(UserError, match=rf"option {key}: must be a finite number, got"):
        parse_config(TrainRunConfig, [*REQUIRED, override])


def test_non_finite_float_in_a_yaml_is_refused(tmp_path):
    _write(tmp_path / "model/mine.yaml", "defaults: [tiny, _self_]\ngaussian: {eps2d: .inf}\n")
    with pytest.raises(UserError, match="option model.gaussian.eps2d: must be a finite"):
        parse_config(TrainRunConfig, [*REQUIRED, "model=mine", f"config_dir={tmp_path}"])


def test_cli_exit_2_and_help(tmp_path, capsys):
    _write(tmp_path / "model/mine.yaml", "guidance: {widht: 3}\n")

    def main(cfg):
        raise AssertionError("not reached")

    argv = [*REQUIRED, "model=mine", f"config_dir={tmp_path}"]
    assert run_cli(TrainRunConfig, main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mine.yaml: unknown key 'guidance.widht'" in err
    assert run_cli(TrainRunConfig, main, [*REQUIRED, "train.lr=nan"]) == 2
    assert "option train.lr: must be a finite number, got nan" in capsys.readouterr().err


@pytest.mark.slow
def test_train_help_lists_stages_and_presets():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts/train.py"), "--help"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "stage=all" in out.stdout and "model=paper|tiny" in out.stdout
    assert "stage: all" in out.stdout and "tet_resolution: 32" in out.stdout


# ---------------------------------------------------------------- hostile input (finding #20)

_ALIAS_BOMB = "\n".join(
    ['defaults: [tiny, _self_]', 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["name: *l8"]
)  # 11 lines, 7 * 9^8 ~ 3e8 strings once expanded


@pytest.fixture
def alarm():
    """Fail (not hang) a test that takes more than 60 s: the bomb must be refused unread."""
    import signal

    def _timeout(*_):
        raise AssertionError("config composition hung")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_yaml_alias_bomb_in_a_preset_is_refused_not_expanded(tmp_path, alarm):
    assert len(_ALIAS_BOMB.splitlines()) == 11
    path = _write(tmp_path / "model/bomb.yaml", _ALIAS_BOMB + "\n")
    argv = [*REQUIRED, "model=bomb", f"config_dir={tmp_path}"]
    with pytest.raises(UserError, match="YAML aliases expand to more than 100000 nodes") as err:
        parse_config(TrainRunConfig, argv)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    # refused wherever it lies in the user's folder, even unselected
    with pytest.raises(UserError, match="bomb.yaml: YAML aliases expand"):
        parse_config(TrainRunConfig, [*REQUIRED, f"config_dir={tmp_path}"])


def test_small_yaml_aliases_still_compose(tmp_path):
    _write(tmp_path / "model/alias.yaml", "defaults: [tiny, _self_]\nname: &n alias\n"
           "guidance: {tet_resolution: &r 24}\ngaussian: {}\nx_unused: null\n")  # fmt: skip
    (tmp_path / "model/alias.yaml").write_text(
        "defaults: [tiny, _self_]\nlr_size: &s 32\nguidance:\n  tet_resolution: *s\n"
    )
    cfg = parse_config(TrainRunConfig, [*REQUIRED, "model=alias", f"config_dir={tmp_path}"])
    assert (cfg.model.lr_size, cfg.model.guidance.tet_resolution) == (32, 32)


def test_a_self_referencing_yaml_alias_is_refused(tmp_path):
    from gphm.config import check_yaml_aliases

    path = _write(tmp_path / "loop.yaml", "a: &a [1, *a]\n")
    with pytest.raises(UserError, match="loop.yaml: a YAML alias refers to its own anchor"):
        check_yaml_aliases(path)


def test_a_config_dir_symlink_loop_is_one_line(tmp_path, capsys):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError, match=r"config_dir: config folder .*a is a symlink loop$"):
        parse_config(TrainRunConfig, [*REQUIRED, f"config_dir={tmp_path / 'a'}"])
    assert run_cli(TrainRunConfig, dict, [*REQUIRED, f"config_dir={tmp_path / 'a'}"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # a loop inside a config folder is walked once, not forever
    (tmp_path / "c/model").mkdir(parents=True)
    (tmp_path / "c/model/again").symlink_to(tmp_path / "c")
    cfg = parse_config(TrainRunConfig, [*REQUIRED, f"config_dir={tmp_path / 'c'}"])
    assert cfg.model.name == "tiny"


@pytest.mark.parametrize(
    "override, shown",
    [("model=[tiny,paper]", "[tiny,paper]"), ("model=nan", "nan"), ("model=null", "null"),
     ("model=3", "3"), ("model=tiny,paper", "tiny,paper")],
)  # fmt: skip
def test_a_config_group_takes_one_preset_name(override, shown):
    with pytest.raises(UserError) as err:
        parse_config(TrainRunConfig, [*REQUIRED, override])
    msg = str(err.value)
    assert msg.startswith(f"{shown and 'model=' + shown}: config group model takes one preset")
    assert msg.endswith("choose one of: paper, tiny") and "\n" not in msg

"""Loading checks of SerializableModule.from_pretrained: every bad checkpoint is a
one-line ValueError naming the file (and the tensor), never a traceback from torch,
safetensors or json."""

import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gphm.models.base import CONFIG_NAME, WEIGHTS_NAME, SerializableModule


@dataclass
class TinyConfig:
    width: int = 4
    depth: int = 1


class Tiny(SerializableModule):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig, num_out: int = 2):
        super().__init__()
        self._record_init(config, num_out=num_out)
        self.inp = nn.Linear(3, config.width)
        self.out = nn.Linear(config.width, num_out)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = Tiny(TinyConfig())
    return model, model.save_pretrained(tmp_path / "m")


def _one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_round_trip(saved):
    model, d = saved
    back = Tiny.from_pretrained(d)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_shape_mismatch_names_the_tensor(saved):
    _, d = saved
    desc = json.loads((d / CONFIG_NAME).read_text())
    desc["config"]["width"] = 5
    (d / CONFIG_NAME).write_text(json.dumps(desc))
    with pytest.raises(ValueError) as info:
        Tiny.from_pretrained(d)
    assert _one_line(info) == (
        f"{d / WEIGHTS_NAME}: tensor inp.weight has shape [4, 3], Tiny expects [5, 3] "
        "(weights from another config?)"
    )


def test_missing_and_unexpected_keys(saved):
    model, d = saved
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["extra.weight"] = state.pop("out.weight")
    save_file(state, str(d / WEIGHTS_NAME))
    with pytest.raises(ValueError) as info:
        Tiny.from_pretrained(d)
    assert _one_line(info).endswith(
        "weights do not match Tiny (missing out.weight; unexpected extra.weight)"
    )


def test_non_finite_weights_are_refused(saved):
    model, d = saved
    with torch.no_grad():
        model.out.bias[1] = float("nan")
    model.save_pretrained(d)
    with pytest.raises(ValueError, match=r"tensor out.bias has 1 non-finite values") as info:
        Tiny.from_pretrained(d)
    assert str(d / WEIGHTS_NAME) in _one_line(info)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_or_truncated_weights(saved, damage):
    _, d = saved
    path = d / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) - 7], "garbage": b"\x99" * 64, "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match="not a readable safetensors file") as info:
        Tiny.from_pretrained(d)
    assert _one_line(info).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", r"expected a JSON object \{...\}, got list"),
        ('{"class": "Tiny",', r"invalid JSON at line 1 column 18"),
        ('{"class": "Other"}', r"holds a 'Other', expected 'Tiny'"),
        ('{"class": "Tiny", "config": [1]}', r"'config' must be a JSON object"),
        ('{"class": "Tiny", "config": {}, "init_kwargs": {"num_oops": 1}}', r"init_kwargs"),
    ],
)
def test_bad_config_json(saved, text, message):
    _, d = saved
    (d / CONFIG_NAME).write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        Tiny.from_pretrained(d)
    assert _one_line(info).startswith(f"{d / CONFIG_NAME}: ")


def test_huge_config_is_refused_before_allocating(saved, monkeypatch):
    _, d = saved
    desc = json.loads((d / CONFIG_NAME).read_text())
    desc["config"]["width"] = 1_000_000  # 8 TB of weights
    (d / CONFIG_NAME).write_text(json.dumps(desc))
    monkeypatch.setenv("GPHM_MEMORY_LIMIT", "4G")

    def never(*args, **kwargs):
        raise AssertionError("the module must not be built")

    monkeypatch.setattr(Tiny, "__init__", never)
    with pytest.raises(ValueError, match=r"config.width=1000000 would need 7\.3 TB; the limit "
                       r"is 4\.0 GB \(set GPHM_MEMORY_LIMIT") as info:  # fmt: skip
        Tiny.from_pretrained(d)
    assert _one_line(info).startswith(f"{d / CONFIG_NAME}: ")


def test_load_run_config_json_that_is_not_an_object(tmp_path):
    from gphm.models.runs import load_run

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / CONFIG_NAME).write_text("[]")
    with pytest.raises(ValueError, match=r"model/config.json: expected a JSON object \{...\}"):
        load_run(tmp_path)
    (tmp_path / "model" / CONFIG_NAME).write_bytes(b'{"class": "\xff"}')
    with pytest.raises(ValueError, match=r"model/config.json: not UTF-8 text"):
        load_run(tmp_path)


def test_compare_state_dict_lists_every_difference():
    from gphm.models.base import compare_state_dict

    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "n": torch.zeros(2, dtype=torch.long)}
    assert not compare_state_dict(dict(expected), expected)
    state = {"a": torch.zeros(3, 2), "b": torch.tensor([0.0, float("nan"), float("inf"), 1.0]),
             "n": torch.zeros(2, dtype=torch.long), "extra": torch.zeros(1)}  # fmt: skip
    found = compare_state_dict(state, expected)
    assert found and found.missing == [] and found.unexpected == ["extra"]
    assert found.shapes == [("a", (3, 2), (2, 3))]
    assert found.nonfinite == [("b", 2, 4)]
    assert compare_state_dict({"b": state["b"]}, expected, finite=False).nonfinite == []
    assert compare_state_dict({"b": state["b"]}, expected, finite=False).missing == ["a", "n"]

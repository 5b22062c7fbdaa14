"""GaussianHeadConfig.semantics: the rasterization rule a stage-2 model records, the
default for new models, and ``"legacy"`` for config.json files that predate the field."""

import json

import pytest
import torch

import gphm.models.gaussian_head as module
from gphm.models.base import CONFIG_NAME
from gphm.models.gaussian_head import GaussianHead, GaussianHeadConfig

from .test_guidance import _inputs, _tiny_model


@pytest.fixture(scope="module")
def guidance():
    return _tiny_model()


def _spy_semantics(monkeypatch) -> list[str]:
    seen, rasterize = [], module.rasterize_gaussians

    def spy(*args, **kwargs):
        seen.append(kwargs["semantics"])
        return rasterize(*args, **kwargs)

    monkeypatch.setattr(module, "rasterize_gaussians", spy)
    return seen


def test_new_models_use_gsplat15_and_keep_it_through_save_load(guidance, tmp_path, monkeypatch):
    head = GaussianHead.create_from(guidance)
    assert head.config.semantics == "gsplat15"
    head.save_pretrained(tmp_path / "g")
    saved = json.loads((tmp_path / "g" / CONFIG_NAME).read_text())
    assert saved["config"]["semantics"] == "gsplat15"
    loaded = GaussianHead.from_pretrained(tmp_path / "g")
    assert loaded.config.semantics == "gsplat15"
    seen = _spy_semantics(monkeypatch)
    with torch.no_grad():
        loaded(**_inputs(2))
    assert seen == ["gsplat15", "gsplat15"]


def test_old_config_json_without_the_field_loads_as_legacy(guidance, tmp_path, monkeypatch):
    # Opacities above legacy's 0.99 clamp, so that the two rules render differently.
    config = GaussianHeadConfig(init_opacity=0.995)
    GaussianHead.create_from(guidance, config).save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / CONFIG_NAME
    desc = json.loads(path.read_text())
    del desc["config"]["semantics"]  # as written before the field existed
    path.write_text(json.dumps(desc))
    old = GaussianHead.from_pretrained(tmp_path / "old")
    assert old.config.semantics == "legacy"
    seen = _spy_semantics(monkeypatch)
    with torch.no_grad():
        a = old(**_inputs(2))
    assert seen == ["legacy", "legacy"]
    monkeypatch.undo()
    # The rule matters: the same weights render differently under today's default.
    desc["config"]["semantics"] = "gsplat15"
    path.write_text(json.dumps(desc))
    with torch.no_grad():
        b = GaussianHead.from_pretrained(tmp_path / "old")(**_inputs(2))
    assert not torch.equal(a.mask, b.mask)
    # The saved file is rewritten with the field, so it stays legacy from then on.
    old.save_pretrained(tmp_path / "resaved")
    resaved = json.loads((tmp_path / "resaved" / CONFIG_NAME).read_text())
    assert resaved["config"]["semantics"] == "legacy"


def test_unknown_semantics_is_a_clear_config_error():
    with pytest.raises(ValueError, match=r"semantics must be one of \['gsplat15', 'legacy'\]"):
        GaussianHeadConfig(semantics="gsplat14")

"""The layers of the package (docs/architecture.md §2), checked on every import statement.

Every module of ``gphm`` is parsed with ``ast`` and every ``import`` in it, at module
level or inside a function (a lazy import is still a dependency), is mapped to the
top-level part of ``gphm`` it names (``gphm.models.base`` -> ``models``). A part may import
its own layer and the layers below, never one above; a few parts are held to a smaller
set. A new top-level module or package must be given a layer here and in the document.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gphm"

LAYERS = [
    # 0: foundations, no model, no torch needed to import (config: hydra only)
    {"errors", "io", "geometry", "config"},
    # 1: pure math on tensors: rasterisers, loss functions
    {"render", "losses"},
    # 2: state and data: nn.Modules and their checkpoints; the dataset format, loaders,
    #    generator, importers and preprocessing
    {"models", "data"},
    # 3: engines over a model: rendering views and rigs; the inversion engine
    {"rendering", "inversion"},
    # 4: workflows: training, fitting, tracking, evaluation, export, showcase
    {"training", "fitting", "tracking", "evaluation", "export", "showcase"},
    # 5: user-facing surfaces other than the command line: the Python API, the viewer
    {"api", "viewer"},
    # 6: the command-line tools
    {"cli"},
    # 7: the package itself (``gphm/__init__.py`` re-exports the API lazily)
    {"gphm"},
]

ONLY = {
    "errors": set(),
    "io": {"errors"},
    "geometry": {"errors"},
    "config": {"errors"},
    "render": {"errors", "io", "geometry"},
    "losses": {"errors", "geometry"},
    "models": {"errors", "io", "geometry", "config", "render", "losses"},  # not data
    "data": {"errors", "io", "geometry", "config", "render", "losses"},  # not models
}
"""Parts held to fewer imports than their layer allows (the rest: layers at or below)."""

LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str:
    """``gphm.models.base`` -> ``models``; ``gphm`` -> ``gphm``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, ``gphm.x.y``) of every gphm module ``path`` imports, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package, up level - 1
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from gphm import losses`, `from . import base`: the names are modules (for
            # `from gphm.x import y` the part is x whatever y is).
            if name == "gphm" or node.module is None:
                found += [(node.lineno, f"{name}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, name))
    return [(line, name) for line, name in found if name == "gphm" or name.startswith("gphm.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in MODULES}
    unplaced = sorted(parts - set(LAYER))
    assert not unplaced, (
        f"gphm parts without a layer: {unplaced}; add each to LAYERS in "
        "tests/test_layering.py and to docs/architecture.md §2"
    )


def test_imports_follow_the_layers():
    bad = []
    for path in MODULES:
        here = _part(_module_name(path))
        if here not in LAYER:
            continue  # reported by test_every_part_has_a_layer
        for line, name in _imported(path):
            there = _part(name)
            if there == here:
                continue
            allowed = ONLY.get(here)
            if allowed is not None and there not in allowed:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} may import only "
                           f"{sorted(allowed) or 'nothing of gphm'}, imports {name}")  # fmt: skip
            elif there not in LAYER or LAYER[there] > LAYER[here]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} (layer "
                           f"{LAYER[here]}) imports {name} (layer {LAYER.get(there)})")  # fmt: skip
    assert not bad, "\n".join(bad)


def test_nothing_outside_the_cli_imports_it():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line}: {name}" for p in MODULES
           if _part(_module_name(p)) != "cli"
           for line, name in _imported(p) if _part(name) == "cli"]  # fmt: skip
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "source, name, expected",
    [
        ("from gphm.cli import run_cli\n", "gphm/training/x.py", ["gphm.cli"]),
        ("def f():\n    import gphm.api\n", "gphm/models/x.py", ["gphm.api"]),
        ("from . import base\n", "gphm/models/x.py", ["gphm.models.base"]),
        ("from ..io import atomic\n", "gphm/models/x.py", ["gphm.io"]),
        ("from .. import api\n", "gphm/models/__init__.py", ["gphm.api"]),
        ("from gphm import losses, api\n", "gphm/render/x.py", ["gphm.losses", "gphm.api"]),
        ("import numpy, torch.nn\n", "gphm/io/x.py", []),
    ],
)  # fmt: skip
def test_the_walker_sees_every_kind_of_import(tmp_path, monkeypatch, source, name, expected):
    """The checker itself: function-level, relative and ``from gphm import`` imports."""
    root = tmp_path / "gphm"
    path = root / name.removeprefix("gphm/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    monkeypatch.setattr(f"{__name__}.PACKAGE", root)
    assert [n for _, n in _imported(path)] == expected

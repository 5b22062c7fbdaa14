"""Synthetic head generator (gphm.data.synthetic, scripts/make_synthetic.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from gphm.data.synthetic import (
    EXPRESSION_NAMES,
    EXPRESSIONS,
    ExpressionParams,
    IdentityParams,
    MakeSyntheticConfig,
    ShapeParams,
    build_template,
    make_head,
    sample_identity,
)
from gphm.data.synthetic.head import vertex_normals
from gphm.data.synthetic.regions import mouth_band
from gphm.data.synthetic.render import (
    HeadPose,
    camera_rig,
    front_faces,
    render_views,
    sample_head_pose,
)
from gphm.data.synthetic.splits import (
    choose_combos,
    choose_heldout_cameras,
    choose_heldout_combos,
    choose_val_cameras,
    max_heldout_combos,
    split_of,
)
from gphm.geometry import project_points

ROOT = Path(__file__).resolve().parents[2]
SHAPE_NAMES = [f.name for f in dataclasses.fields(ShapeParams)]


@pytest.fixture(scope="module")
def template():
    return build_template()  # default resolution (cached)


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic", ROOT / "scripts/make_synthetic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(cli, argv):
    from gphm.cli import run_cli

    return run_cli(MakeSyntheticConfig, cli.main, argv, summary=cli.summary)


def _tiny(out, **extra):
    args = {
        "out": out,
        "num_identities": 3,
        "num_expressions": 3,
        "num_views": 2,
        "resolution": 32,
        "supersample": 1,
        "mesh_frequency": 12,
        **extra,
    }
    return [f"{k}={v}" for k, v in args.items()]


def _face_normals(verts, faces):
    return np.cross(
        verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]]
    )


# ----------------------------------------------------------------------------- the mesh


def test_template_is_closed_genus0_and_dense(template):
    assert template.num_vertices >= 10_000
    mesh = trimesh.Trimesh(template.rest, template.faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2  # closed genus 0
    assert mesh.volume > 0  # faces wind counter-clockwise seen from outside
    assert np.abs(template.rest).max() < 0.95  # canonical head space
    # Anatomy in the canonical frame: +y up, +z the face, nose tip in front.
    nose_tip = template.rest[template.landmark_indices[30]]
    assert nose_tip[2] == pytest.approx(template.rest[:, 2].max(), abs=0.02)


def _rng_identities():
    rng = np.random.default_rng(7)
    extremes = [IdentityParams(shape=ShapeParams(**{n: s for n in SHAPE_NAMES})) for s in (-1, 1)]
    corners = [
        IdentityParams(shape=ShapeParams(**dict(zip(SHAPE_NAMES, rng.choice([-1.0, 1.0], 17)))))
        for _ in range(2)
    ]
    return extremes + corners + [sample_identity(rng)]


def test_deformations_never_fold_the_mesh(template):
    """Every identity extreme × expression keeps every triangle's orientation."""
    rest_n = _face_normals(template.rest, template.faces)
    everything = ExpressionParams(**{k: 1.0 for k in ExpressionParams().to_dict()})
    for identity in _rng_identities():
        for expr in [*EXPRESSIONS.values(), everything]:
            n = _face_normals(make_head(template, identity, expr).verts, template.faces)
            assert ((n * rest_n).sum(1) > 0).all()


def test_identity_parameters_change_the_shape(template):
    neutral = EXPRESSIONS["neutral"]
    mean = make_head(template, IdentityParams(), neutral).verts
    for name in SHAPE_NAMES:
        shape = dataclasses.replace(ShapeParams(), **{name: 1.0})
        verts = make_head(template, IdentityParams(shape=shape), neutral).verts
        assert np.abs(verts - mean).max() > 0.01, name
    a, b = (make_head(template, sample_identity(np.random.default_rng(s)), neutral) for s in (1, 2))
    assert np.linalg.norm(a.verts - b.verts, axis=1).mean() > 0.005
    assert np.abs(a.albedo - b.albedo).mean() > 0.02  # appearance differs too


# ----------------------------------------------------------------------------- landmarks


def test_landmarks_are_fixed_vertices_in_ibug_order(template):
    idx = template.landmark_indices
    assert idx.shape == (68,) and len(set(idx.tolist())) == 68
    assert np.array_equal(idx, build_template.__wrapped__().landmark_indices)  # deterministic
    lmk = make_head(template, IdentityParams(), EXPRESSIONS["neutral"]).landmarks
    assert np.array_equal(lmk, template.rest[idx])
    x, y = lmk[:, 0], lmk[:, 1]
    # Subject's right (x < 0) first: jaw 0 / brow 17 / eye 36 / mouth corner 48.
    assert x[0] < 0 < x[16] and x[17] < 0 < x[26] and x[36] < 0 < x[45] and x[48] < 0 < x[54]
    assert np.argmin(y[:17]) == 8  # chin is the lowest jaw point
    assert np.all(np.diff(y[27:31]) < 0)  # nose bridge runs down to the tip
    assert y[19] > y[37] > y[40] > y[30] > y[51] > y[57] > y[8]  # brow > eye > nose > mouth > chin


def test_landmarks_move_with_expressions(template):
    identity = sample_identity(np.random.default_rng(3))
    neutral = make_head(template, identity, EXPRESSIONS["neutral"]).landmarks
    move = {
        n: make_head(template, identity, EXPRESSIONS[n]).landmarks - neutral for n in EXPRESSIONS
    }
    # jaw_open: chin and lower lip drop, the upper lip stays; the inner lips part.
    assert move["jaw_open"][[8, 57, 66], 1].max() < -0.05
    assert np.abs(move["jaw_open"][51]).max() < 0.01
    # blink_l closes the left eye (42-47) and leaves the right one open.
    upper, lower = [43, 44], [47, 46]
    open_l = neutral[upper, 1] - neutral[lower, 1]
    shut_l = open_l + move["blink_l"][upper, 1] - move["blink_l"][lower, 1]
    assert np.all(open_l > 0.03) and np.all(np.abs(shut_l) < 0.3 * open_l)
    assert np.abs(move["blink_l"][36:42]).max() < 1e-9
    assert np.abs(move["blink_r"][42:48]).max() < 1e-9 < np.abs(move["blink_r"][36:42]).max()
    # brows up / down, mouth corner up on the smiling side only, lips narrower on pucker.
    assert move["brow_raise"][17:27, 1].min() > 0.02
    assert move["frown"][[21, 22], 1].max() < -0.01
    assert move["smile_l"][54, 1] > 0.03 and abs(move["smile_l"][48, 1]) < 0.005
    assert move["smile_r"][48, 1] > 0.03 and abs(move["smile_r"][54, 1]) < 0.005
    assert (neutral[54, 0] - neutral[48, 0]) - (
        (neutral + move["pucker"])[54, 0] - (neutral + move["pucker"])[48, 0]
    ) > 0.03
    assert np.abs(move["neutral"]).max() == 0


def test_expression_colours(template):
    identity = IdentityParams()
    neutral = make_head(template, identity, EXPRESSIONS["neutral"]).albedo
    # The parted lips show the dark mouth interior between them.
    t, inside = mouth_band(template.rest)
    middle = (inside > 0.5) & (np.abs(t - 0.5) < 0.15)
    assert middle.sum() >= 5
    opened = make_head(template, identity, EXPRESSIONS["jaw_open"]).albedo
    assert np.abs(opened[middle] - neutral[middle]).mean() > 0.1
    assert opened[middle].sum(1).min() < 0.5 < 0.7 < neutral[middle].sum(1).min()  # dark mouth
    for name in ("brow_raise", "frown", "smile_l", "blink_l", "cheek_puff"):
        assert (
            np.abs(make_head(template, identity, EXPRESSIONS[name]).albedo - neutral).max() > 0.05
        )


# ----------------------------------------------------------------------------- rendering


def test_landmarks_project_inside_rendered_masks():
    template = build_template(20)
    identity = sample_identity(np.random.default_rng(0))
    head = make_head(template, identity, EXPRESSIONS["jaw_open"])
    pose = sample_head_pose(np.random.default_rng(1))
    rig = camera_rig(4, 64)
    normals = vertex_normals(head.verts, template.faces)
    views = render_views(head.verts, template.faces, normals, head.albedo, pose, rig, 2)
    assert views.images.shape == (4, 64, 64, 3) and views.masks.shape == (4, 64, 64)
    assert views.images.dtype == np.uint8 and views.masks.dtype == np.uint8
    world = torch.from_numpy(pose.apply(head.landmarks))
    uv, depth = project_points(
        world[None], torch.from_numpy(rig.viewmats), torch.from_numpy(rig.Ks)
    )
    assert (depth > 0).all()
    px = uv.floor().long().numpy()
    assert ((px >= 0) & (px < 64)).all()
    # Landmarks on the outline (the nose tip in profile) may fall a fraction of a pixel
    # outside the sampled mask: allow one pixel.
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(views.masks).float()[:, None], 3, 1, 1)
    for c in range(4):
        assert (grown[c, 0, px[c, :, 1], px[c, :, 0]] > 0).all()
        assert (views.masks[c, px[c, :, 1], px[c, :, 0]] > 0).mean() > 0.9
    # White background, head pixels darker; coverage about 60-70 % of the height.
    assert (views.images[views.masks == 0] == 255).all()
    rows = np.flatnonzero(views.masks.max(axis=(0, 2)) > 0)
    assert 0.55 < (rows[-1] - rows[0] + 1) / 64 < 0.8


def test_back_face_culling_changes_no_pixel():
    from gphm.render.mesh import render_mesh

    template = build_template(16)
    head = make_head(template, IdentityParams(), EXPRESSIONS["neutral"])
    rig = camera_rig(3, 48)
    pose = HeadPose(np.eye(3), np.zeros(3), 1.0)
    verts = torch.from_numpy(pose.apply(head.verts)).float()
    faces = torch.from_numpy(np.array(template.faces))
    viewmats, Ks = torch.from_numpy(rig.viewmats).float(), torch.from_numpy(rig.Ks).float()
    from gphm.geometry import camera_centers

    keep = front_faces(verts, faces, camera_centers(viewmats))
    assert 0.3 < keep.float().mean() < 1.0
    full = render_mesh(verts[None].expand(3, -1, -1), faces, viewmats, Ks, 48, 48)
    culled = render_mesh(verts[None].expand(3, -1, -1), faces[keep], viewmats, Ks, 48, 48)
    assert torch.equal(full.mask, culled.mask) and torch.equal(full.depth, culled.depth)


def test_camera_rig_layout():
    rig = camera_rig(8, 128)
    assert rig.names == [f"cam_{i:02d}" for i in range(8)]
    assert np.abs(rig.azimuth).max() == 70 and np.abs(rig.elevation).max() <= 25
    assert rig.most_frontal() in (3, 4)
    np.testing.assert_array_equal(rig.viewmats, camera_rig(8, 128).viewmats)


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize("num_views, count", [(2, 1), (3, 1), (8, 2), (8, 7), (16, 4)])
def test_heldout_cameras(num_views, count):
    keep = num_views // 2
    held = choose_heldout_cameras(num_views, count, keep)
    assert len(held) == count == len(set(held)) and keep not in held
    assert all(0 <= c < num_views for c in held)
    if num_views - 1 > count + 1:  # room to avoid the extreme cameras
        assert 0 not in held or num_views - 1 not in held


def test_heldout_combos_keep_every_label_in_training():
    for subjects in range(1, 7):
        for expressions in range(1, 10):
            limit = max_heldout_combos(subjects, expressions)
            if subjects < 2 or expressions < 2:
                assert limit == 0
            for per_subject in range(limit + 1):
                combos = choose_heldout_combos(
                    subjects, expressions, per_subject, np.random.default_rng(0)
                )
                assert len(combos) == subjects * per_subject
                assert all(e != 0 for _, e in combos)  # neutral is never held out
                for _, e in combos:
                    trained = [s for s in range(subjects) if (s, e) not in combos]
                    assert trained, (subjects, expressions, per_subject, e)
            with pytest.raises(ValueError, match="heldout_combos_per_subject"):
                choose_heldout_combos(subjects, expressions, limit + 1, np.random.default_rng(0))


@pytest.mark.parametrize("num_views, heldout, val", [(4, 1, 1), (8, 2, 1), (9, 2, 2), (16, 4, 3)])
def test_val_cameras_are_disjoint_from_heldout_and_reference(num_views, heldout, val):
    keep = num_views // 2
    held = choose_heldout_cameras(num_views, heldout, keep)
    vals = choose_val_cameras(num_views, val, keep, held)
    assert len(vals) == val == len(set(vals)) and not set(vals) & (set(held) | {keep})
    assert held == choose_heldout_cameras(num_views, heldout, keep)  # unchanged by val
    with pytest.raises(ValueError, match="validation cameras"):
        choose_val_cameras(num_views, num_views - heldout, keep, held)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_val_and_heldout_combos_keep_every_label_in_training(seed):
    for subjects in range(1, 9):
        for expressions in range(1, 13):
            limit = max_heldout_combos(subjects, expressions)
            for h in range(limit + 1):
                for v in range(limit + 1 - h):
                    held, val = choose_combos(
                        subjects, expressions, h, v, np.random.default_rng(seed)
                    )
                    assert len(held) == subjects * h and len(val) == subjects * v
                    assert not held & val and all(e != 0 for _, e in held | val)
                    for _, e in held | val:  # a training source for every label
                        assert any((s, e) not in held | val for s in range(subjects))
                    alone = choose_heldout_combos(
                        subjects, expressions, h, np.random.default_rng(seed)
                    )
                    assert v > 0 or held == alone
            with pytest.raises(ValueError, match="val_combos_per_subject"):
                choose_combos(subjects, expressions, 0, limit + 1, np.random.default_rng(seed))


def test_val_combos_keep_the_heldout_pairs_of_the_demo_set():
    held, val = choose_combos(8, 8, 1, 1, np.random.default_rng([0, 3]))
    assert held == choose_heldout_combos(8, 8, 1, np.random.default_rng([0, 3]))
    assert len(val) == 8


def test_split_precedence():
    kw = dict(heldout_cameras=[1], heldout_combos={(0, 1)}, val_cameras=[2], val_combos={(0, 2)})
    assert split_of(0, 1, 2, **kw) == "heldout_combo"
    assert split_of(0, 2, 1, **kw) == "val_combo"  # a val pair at a held-out camera
    assert split_of(0, 3, 1, **kw) == "heldout_view"
    assert split_of(0, 3, 2, **kw) == "val_view"
    assert split_of(0, 3, 0, **kw) == "train"


def test_split_defaults():
    demo = MakeSyntheticConfig(out="x", num_views=9)
    assert (demo.resolved_heldout_views(), demo.resolved_val_views()) == (2, 1)
    assert 9 - 2 - 1 == 8 - MakeSyntheticConfig(out="x", num_views=8).resolved_heldout_views()
    assert (demo.resolved_heldout_combos(), demo.resolved_val_combos()) == (1, 1)
    unseen = MakeSyntheticConfig(
        out="x", num_identities=2, num_expressions=2, num_views=4, heldout_views=1
    )
    assert (unseen.resolved_val_views(), unseen.resolved_val_combos()) == (1, 0)
    two = MakeSyntheticConfig(out="x", num_views=3)  # 1 held out: 2 left, keep both
    assert two.resolved_val_views() == 0
    tiny = MakeSyntheticConfig(out="x", num_identities=3, num_expressions=3)
    assert (tiny.resolved_heldout_combos(), tiny.resolved_val_combos()) == (1, 0)
    assert MakeSyntheticConfig(out="x", num_views=4, val_views=0).resolved_val_views() == 0


# ----------------------------------------------------------------------------- CLI + dataset


def test_cli_writes_val_splits(cli, tmp_path):
    from gphm.data.format import SPLITS, load_dataset_dir

    out = tmp_path / "v"
    extra = dict(num_identities=3, num_expressions=4, num_views=4, seed=3)
    assert _run(cli, _tiny(out, **extra)) == 0
    ds, meta = load_dataset_dir(out)
    rows = ds.select_columns(["subject", "expression", "camera", "split"]).to_list()
    sizes = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
    assert meta["split_sizes"] == sizes and list(sizes) == list(SPLITS)
    # 3 subjects x 4 expressions x 4 cameras; 1 held-out + 1 val camera, 1 + 1 pairs each
    assert sizes == {
        "train": 3 * 2 * 2,
        "val_view": 3 * 2,
        "val_combo": 3 * 4,
        "heldout_view": 3 * 2,
        "heldout_combo": 3 * 4,
    }
    cams = meta["generator"]["cameras"]
    assert len(cams["val"]) == 1 and not set(cams["val"]) & set(cams["heldout"])
    assert cams["reference"] not in cams["val"] + cams["heldout"]
    train = [r for r in rows if r["split"] == "train"]
    assert not {r["camera"] for r in train} & set(cams["val"] + cams["heldout"])
    trained = {(r["subject"], r["expression"]) for r in train}
    for kind in ("val_combo", "heldout_combo"):
        pairs = {(r["subject"], r["expression"]) for r in rows if r["split"] == kind}
        assert len(pairs) == 3 and not pairs & trained
        for s, label in pairs:
            assert any(t != s and e == label for t, e in trained)
    assert meta["generator"]["params"]["val_views"] == 1
    assert len(meta["generator"]["val_combos"]) == 3
    again = tmp_path / "again"
    assert _run(cli, _tiny(again, **extra)) == 0
    assert _hashes(again) == _hashes(out)  # byte-identical for a seed


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "report.json"  # the report records wall-clock time
    }


def test_cli_writes_a_deterministic_dataset(cli, tmp_path, capsys):
    from gphm.data.format import load_dataset_dir

    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(cli, _tiny(a, seed=5)) == 0
    assert "wrote 18 rows" in capsys.readouterr().out
    assert _run(cli, _tiny(b, seed=5)) == 0
    assert _hashes(a) == _hashes(b)
    assert {"contact_sheet.png", "meta.json", "report.json", "state.json"} <= set(
        p.name for p in a.iterdir()
    )
    report = json.loads((a / "report.json").read_text())
    assert report["num_rows"] == 18 and report["split_sizes"]["heldout_combo"] == 6

    ds, meta = load_dataset_dir(a)
    assert len(ds) == 18 and meta["num_frames"] == 9 and meta["landmark_convention"] == "ibug68"
    assert meta["expressions"] == list(EXPRESSION_NAMES[:3])
    assert "out" not in meta["generator"]["params"]  # output path must not change the bytes
    heldout_cams = set(meta["generator"]["cameras"]["heldout"])
    rows = ds.select_columns(["subject", "frame", "expression", "camera", "split"]).to_list()
    train = [r for r in rows if r["split"] == "train"]
    assert not heldout_cams & {r["camera"] for r in train}
    held_pairs = {(r["subject"], r["expression"]) for r in rows if r["split"] == "heldout_combo"}
    assert not held_pairs & {(r["subject"], r["expression"]) for r in train}
    for s, label in held_pairs:
        assert any(r["expression"] == label and r["subject"] != s for r in train)
    for r in rows:
        frame = meta["frames"][r["frame"]]
        assert (frame["subject"], frame["expression"]) == (r["subject"], r["expression"])
    row = ds[0]
    assert row["image"].size == (32, 32) and np.asarray(row["landmarks_3d"]).shape == (68, 3)

    c = _run(cli, _tiny(tmp_path / "c", seed=6))
    assert c == 0 and _hashes(tmp_path / "c") != _hashes(a)


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_views=1", "num_views must be >= 2"),
        ("resolution=40", "resolution must be a multiple of 16"),
        ("resolution=16", "resolution must be a multiple of 16 and >= 32"),
        ("num_expressions=99", "num_expressions must be in 1..12"),
        ("num_identities=0", "num_identities must be >= 1"),
        ("heldout_views=2", "heldout_views must be in 0..1"),
        ("heldout_combos_per_subject=2", "heldout_combos_per_subject must be in 0..1"),
        ("val_views=1", "val_views must be in 0..0"),
        ("val_combos_per_subject=1", "val_combos_per_subject must be in 0..0"),
        ("supersample=9", "supersample must be in 1..4"),
        ("num_view=3", "unknown option 'num_view'. Did you mean num_views"),
    ],
)
def test_cli_refuses_bad_parameters(cli, tmp_path, capsys, override, message):
    existing = tmp_path / "ds"
    existing.mkdir()
    (existing / "keep.txt").write_text("old")
    argv = [a for a in _tiny(existing) if not a.startswith(override.split("=")[0] + "=")]
    assert _run(cli, [*argv, override, "overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_cli_keeps_an_existing_dataset(cli, tmp_path, capsys, monkeypatch):
    existing = tmp_path / "ds"
    existing.mkdir()
    (existing / "keep.txt").write_text("old")
    assert _run(cli, _tiny(existing)) == 2
    assert "already exists (pass overwrite=true" in capsys.readouterr().err

    import gphm.data.synthetic.truth as truth  # every synthetic render goes through it

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    # overwrite=true replaces datasets only, never a folder of user files
    assert _run(cli, [*_tiny(existing), "overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert f"{existing} is a non-empty folder that is not a gphm dataset" in err
    assert err.count("\n") == 1
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]

    dataset = tmp_path / "dataset"
    assert _run(cli, _tiny(dataset)) == 0
    before = _hashes(dataset)
    monkeypatch.setattr(truth, "render_views", broken)
    with pytest.raises(RuntimeError, match="renderer exploded"):
        _run(cli, [*_tiny(dataset), "overwrite=true"])
    assert _hashes(dataset) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "ds"]  # no leftovers


def test_cli_overwrite_replaces_a_dataset(cli, tmp_path, capsys):
    out = tmp_path / "ds"
    assert _run(cli, _tiny(out, seed=1)) == 0
    assert _run(cli, [*_tiny(out, seed=2), "overwrite=true"]) == 0
    assert json.loads((out / "meta.json").read_text())["generator"]["params"]["seed"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(cli, [*_tiny(empty), "overwrite=true"]) == 0

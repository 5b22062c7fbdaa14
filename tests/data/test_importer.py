"""Importer round trip on a small fake NeRSemble-style capture built here with numpy."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gphm.data.format import load_dataset_dir
from gphm.data.importers.nersemble import CaptureError, ImportOptions, import_nersemble
from gphm.geometry.cameras import look_at, project_points
from gphm.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

ROOT = Path(__file__).resolve().parents[2]
IH, IW = 48, 40  # source images (H, W)
CAMS = ["220700191", "222200037", "222200049"]
FRAMES = ["0000", "0003", "0007"]
L = 68
RED = (255, 0, 0)


def _model_landmarks(rng) -> np.ndarray:  # [L, 3] on the front of a face-sized ellipsoid (mm)
    theta = rng.uniform(-1.0, 1.0, L)
    phi = rng.uniform(-0.8, 0.8, L)
    return np.stack(
        [70 * np.sin(theta) * np.cos(phi), 90 * np.sin(phi), 60 * np.cos(theta) * np.cos(phi)], -1
    )


def make_capture(root: Path, seed: int = 0, per_frame_lmk: bool = True) -> dict:
    """Write the capture; return its ground truth (source landmarks and OpenCV pixels)."""
    rng = np.random.default_rng(seed)
    model = _model_landmarks(rng)
    head = np.array([0.1, -0.3, 1.5])  # source world, metres
    G = axis_angle_to_matrix(torch.tensor([2.0, -0.5, 0.7], dtype=torch.float64)).numpy()
    lmks, uv_cv = [], {}
    for fi, frame in enumerate(FRAMES):
        aa = rng.normal(size=3) * 0.15 + np.array([0.0, 0.3, 0.0])
        R = G @ axis_angle_to_matrix(torch.from_numpy(aa)).numpy()  # source world is tilted
        aa = matrix_to_axis_angle(torch.from_numpy(R)).numpy()
        scale = 0.001 * (1 + 0.05 * fi)
        t = head + rng.normal(size=3) * 0.02
        lmk = scale * model @ R.T + t
        lmks.append(lmk)
        (root / "params" / frame).mkdir(parents=True)
        np.savez(root / "params" / frame / "params.npz", pose=np.r_[aa, t][None], scale=[scale])
        if per_frame_lmk:
            np.save(root / "params" / frame / "lmk_3d.npy", lmk.astype(np.float32))
        for ci, cam in enumerate(CAMS):
            yaw = (ci - 1) * 0.5
            eye = head + G @ (0.6 * np.array([np.sin(yaw), 0.1, np.cos(yaw)]))  # facing the face
            V = look_at(*(torch.tensor(v) for v in (eye, head, G[:, 1])))
            K = np.array([[40.0, 0, 19.5], [0, 42.0, 23.5], [0, 0, 1]])
            cam_dir = root / "cameras" / frame
            cam_dir.mkdir(parents=True, exist_ok=True)
            np.savez(cam_dir / f"camera_{cam}.npz", extrinsic=V.numpy()[:3], intrinsic=K)
            # OpenCV convention: pixel (i, j) is centred at (i, j)
            cam_pts = lmk @ V.numpy()[:3, :3].T + V.numpy()[:3, 3]
            uv = cam_pts[:, :2] / cam_pts[:, 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
            uv_cv[frame, cam] = uv
            img = np.full((IH, IW, 3), 90, np.uint8)
            mask = np.zeros((IH, IW), np.uint8)
            ij = np.round(uv).astype(int)
            ok = (ij[:, 0] >= 0) & (ij[:, 0] < IW) & (ij[:, 1] >= 0) & (ij[:, 1] < IH)
            img[ij[ok, 1], ij[ok, 0]] = RED
            mask[ij[ok, 1], ij[ok, 0]] = 255
            img_dir = root / "images" / frame
            img_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(img_dir / f"image_{cam}.png")
            Image.fromarray(mask).save(img_dir / f"mask_{cam}.png")
    if not per_frame_lmk:
        np.save(root / "lmk_3d.npy", np.stack(lmks))
    return {"lmk": np.stack(lmks), "uv_cv": uv_cv, "model": model}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap") / "subject_031"
    truth = make_capture(root)
    return root, truth


@pytest.fixture(scope="module")
def imported(capture, tmp_path_factory):
    root, truth = capture
    out = tmp_path_factory.mktemp("imp") / "ds"
    report = import_nersemble(root, out, ImportOptions(heldout_cameras=[CAMS[2]]))
    ds, meta = load_dataset_dir(out)
    return ds, meta, report, truth


def test_meta_and_rows(imported):
    ds, meta, report, _ = imported
    assert len(ds) == report["rows"] == len(FRAMES) * len(CAMS)
    assert meta["subjects"] == ["subject_031"] and meta["expressions"] == FRAMES
    assert meta["cameras"] == sorted(CAMS) and meta["image_size"] == [IH, IW]
    assert meta["landmark_convention"] == "ibug68" and meta["num_landmarks"] == L
    assert meta["split_sizes"]["heldout_view"] == len(FRAMES)
    assert [f["name"] for f in meta["frames"]] == FRAMES


def test_projection_round_trip(imported):
    ds, meta, _, truth = imported
    for r in ds:
        uv, depth = project_points(
            torch.tensor(r["landmarks_3d"]), torch.tensor(r["viewmat"]), torch.tensor(r["K"])
        )
        assert (depth > 0).all()
        frame = meta["frames"][r["frame"]]["name"]
        expected = truth["uv_cv"][frame, r["camera"]] + 0.5  # OpenCV -> pixel centres at i+.5
        np.testing.assert_allclose(uv.numpy(), expected, atol=2e-3)
        # and the dots drawn in the source image are where the imported cameras say
        img = np.asarray(r["image"])
        ij = np.floor(uv.numpy()).astype(int)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < IW) & (ij[:, 1] >= 0) & (ij[:, 1] < IH)
        assert ok.sum() > L // 2
        assert (img[ij[ok, 1], ij[ok, 0]] == RED).all()


def test_canonical_space(imported):
    ds, meta, report, truth = imported
    lmk = np.stack([np.asarray(r["landmarks_3d"]) for r in ds])
    np.testing.assert_allclose(lmk.reshape(-1, 3).mean(0), 0, atol=1e-5)
    assert np.abs(lmk).max() <= 0.9 and report["landmarks_max_abs"] <= 0.9
    # Head poses are consistent with the landmarks: mapping each frame's world landmarks
    # back to canonical head space gives the same (rigid model) landmarks in every frame.
    canon = []
    for r in ds:
        R, T, s = (np.asarray(r[k], np.float64) for k in ("head_R", "head_T", "head_scale"))
        canon.append((np.asarray(r["landmarks_3d"]) - T) @ R / s)
    np.testing.assert_allclose(canon, np.broadcast_to(canon[0], np.shape(canon)), atol=1e-4)
    assert np.abs(canon).max() <= 0.9 and np.abs(np.mean(canon[0], 0)).max() < 0.1
    # canonical axes follow the model's: +y up (forehead above chin), +z out of the face
    model = truth["model"]
    top, front = np.argmax(model[:, 1]), np.argmax(model[:, 2])
    assert canon[0][top, 1] == pytest.approx(np.max(np.asarray(canon[0])[:, 1]))
    assert canon[0][front, 2] == pytest.approx(np.max(np.asarray(canon[0])[:, 2]))
    ct = meta["canonical_transform"]
    src_centre = truth["lmk"].reshape(-1, 3).mean(0)
    mapped = ct["scale"] * np.asarray(ct["R"]) @ src_centre + np.asarray(ct["T"])
    np.testing.assert_allclose(mapped, 0, atol=1e-6)


def test_canonical_none_and_root_landmarks_and_resize(tmp_path):
    root = tmp_path / "cap"
    truth = make_capture(root, seed=1, per_frame_lmk=False)
    opts = ImportOptions(canonical="none", resolution=IH // 2, lr_size=12, subject="s1")
    import_nersemble(root, tmp_path / "ds", opts)
    ds, meta = load_dataset_dir(tmp_path / "ds")
    assert meta["image_size"] == [IH // 2, IW // 2] and meta["lr_size"] == 12
    assert meta["canonical_transform"]["scale"] == pytest.approx(1.0)
    r = ds[4]
    frame, cam = meta["frames"][r["frame"]]["name"], r["camera"]
    ext = np.load(root / "cameras" / frame / f"camera_{cam}.npz")["extrinsic"]
    np.testing.assert_allclose(np.asarray(r["viewmat"])[:3], ext, atol=1e-6)
    np.testing.assert_allclose(r["landmarks_3d"], truth["lmk"][r["frame"]], atol=1e-6)
    uv, _ = project_points(
        torch.tensor(r["landmarks_3d"]), torch.tensor(r["viewmat"]), torch.tensor(r["K"])
    )
    np.testing.assert_allclose(uv.numpy(), (truth["uv_cv"][frame, cam] + 0.5) / 2, atol=1e-3)


def test_frames_json_subjects_and_combo_split(tmp_path):
    root = tmp_path / "cap"
    make_capture(root, seed=2)
    (root / "frames.json").write_text(
        json.dumps(
            {
                "0000": {"subject": "ann", "expression": "neutral"},
                "0003": {"subject": "ann", "expression": "smile", "split": "heldout_combo"},
                "0007": {"subject": "ben", "expression": "smile"},
            }
        )
    )
    import_nersemble(root, tmp_path / "ds")
    ds, meta = load_dataset_dir(tmp_path / "ds")
    assert meta["subjects"] == ["ann", "ben"] and meta["expressions"] == ["neutral", "smile"]
    assert [f["subject"] for f in meta["frames"]] == [0, 0, 1]
    assert meta["split_sizes"] == {
        "train": 6,
        "val_view": 0,
        "val_combo": 0,
        "heldout_view": 0,
        "heldout_combo": 3,
    }


def test_val_cameras_and_val_combo_frames(tmp_path):
    root = tmp_path / "cap"
    make_capture(root, seed=2)
    (root / "frames.json").write_text(json.dumps({"0003": {"split": "val_combo"}}))
    opts = ImportOptions(heldout_cameras=[CAMS[2]], val_cameras=[CAMS[0]])
    import_nersemble(root, tmp_path / "ds", opts)
    ds, meta = load_dataset_dir(tmp_path / "ds")
    # frame 0003 is a val pair on every camera (pairs win over cameras)
    assert meta["split_sizes"] == {
        "train": 2,
        "val_view": 2,
        "val_combo": 3,
        "heldout_view": 2,
        "heldout_combo": 0,
    }
    rows = ds.select_columns(["camera", "split"]).to_list()
    assert {r["camera"] for r in rows if r["split"] == "val_view"} == {CAMS[0]}
    with pytest.raises(
        ValueError,
        match=rf"cameras \['{CAMS[1]}'\] are in both heldout_cameras=\['{CAMS[1]}'\] and "
        rf"val_cameras=\['{CAMS[1]}'\]",
    ):
        ImportOptions(heldout_cameras=[CAMS[1]], val_cameras=[CAMS[1]])
    with pytest.raises(CaptureError, match=r"val_cameras: \['nope'\] not among the cameras"):
        import_nersemble(root, tmp_path / "ds2", ImportOptions(val_cameras=["nope"]))


def test_out_must_not_be_the_capture(tmp_path):
    root = tmp_path / "cap"
    make_capture(root, seed=4)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    for out, how in ((root, "is"), (root / "ds", "is inside"), (tmp_path, "contains")):
        with pytest.raises(CaptureError, match=rf"out={out} {how} the capture src={root}"):
            import_nersemble(root, out, overwrite=True)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


def test_refuses_a_camera_that_does_not_see_the_head(tmp_path):
    root = tmp_path / "cap"
    make_capture(root, seed=5)
    p = root / "cameras" / "0003" / f"camera_{CAMS[1]}.npz"
    with np.load(p) as z:
        cam = dict(z)
    cam["extrinsic"] = np.diag([-1.0, 1.0, -1.0]) @ cam["extrinsic"]  # turned around
    np.savez(p, **cam)
    with pytest.raises(
        CaptureError,
        match=rf"imported rows are invalid: row 4: field 'viewmat' camera does not see the "
        rf"head: head centre is behind it .*camera '{CAMS[1]}'",
    ):
        import_nersemble(root, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def _break(root: Path, what: str) -> None:
    if what == "missing_camera":
        (root / "cameras" / "0003" / f"camera_{CAMS[1]}.npz").unlink()
    elif what == "extrinsic_4x4":
        p = root / "cameras" / "0000" / f"camera_{CAMS[0]}.npz"
        np.savez(p, extrinsic=np.eye(4), intrinsic=np.eye(3))
    elif what == "no_pose":
        np.savez(root / "params" / "0007" / "params.npz", scale=[1.0])
    elif what == "missing_mask":
        (root / "images" / "0000" / f"mask_{CAMS[2]}.png").unlink()
    elif what == "bad_lmk":
        np.save(root / "params" / "0003" / "lmk_3d.npy", np.zeros((L, 2)))
    elif what == "corrupt_image":
        (root / "images" / "0007" / f"image_{CAMS[0]}.png").write_bytes(b"not a png")


BROKEN = {
    "missing_camera": f"cameras/0003/camera_{CAMS[1]}.npz: file not found",
    "extrinsic_4x4": rf"cameras/0000/camera_{CAMS[0]}.npz: field 'extrinsic' has shape \(4, 4\), "
    r"expected \(3, 4\)",
    "no_pose": r"params/0007/params.npz: missing field 'pose'",
    "missing_mask": f"images/0000/mask_{CAMS[2]}.png: file not found",
    "bad_lmk": r"params/0003/lmk_3d.npy: has shape \(68, 2\), expected \(L, 3\)",
    "corrupt_image": f"images/0007/image_{CAMS[0]}.png: cannot read image",
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_bad_input_clear_error_nothing_left(tmp_path, what):
    root = tmp_path / "cap"
    make_capture(root, seed=3)
    _break(root, what)
    with pytest.raises(CaptureError, match=BROKEN[what]):
        import_nersemble(root, tmp_path / "out" / "ds")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def _cli():
    spec = importlib.util.spec_from_file_location(
        "import_capture", ROOT / "scripts/import_capture.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_cli(capture, tmp_path, capsys):
    root, _ = capture
    cli = _cli()
    out = tmp_path / "ds"
    argv = [f"src={root}", f"out={out}", "lr_size=24", f"heldout_cameras=[{CAMS[0]}]"]
    assert cli.run_cli(cli.ImportConfig, cli.main, argv=argv, summary=cli.summary) == 0
    assert "imported 9 rows" in capsys.readouterr().out
    assert json.loads((out / "import_report.json").read_text())["rows"] == 9
    assert load_dataset_dir(out)[1]["split_sizes"]["heldout_view"] == 3
    # existing output, bad option value, bad input: one line, exit 2
    assert cli.run_cli(cli.ImportConfig, cli.main, argv=argv) == 2
    assert "already exists" in capsys.readouterr().err
    bad = [f"src={root}", f"out={tmp_path / 'x'}", "canonical=maybe"]
    assert cli.run_cli(cli.ImportConfig, cli.main, argv=bad) == 2
    assert "canonical must be 'auto' or 'none'" in capsys.readouterr().err
    bad = [f"src={tmp_path / 'nothing'}", f"out={tmp_path / 'x'}"]
    assert cli.run_cli(cli.ImportConfig, cli.main, argv=bad) == 2
    assert "capture folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

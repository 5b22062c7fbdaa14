"""Multi-view preprocessing on a synthetic capture with known ground truth (no MediaPipe).

The capture is built here: the canonical landmark template, slightly reshaped and scaled
to metres, is posed per frame in a tilted world and seen by a ring of look-at cameras; a
fake detector returns the projected landmarks plus σ = 0.5 px noise, one camera's
detections are corrupted in every frame, one image is unreadable and one shows "no face".
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gphm.data.format import load_dataset_dir
from gphm.data.importers.nersemble import CaptureError
from gphm.data.preprocess import detectors
from gphm.data.preprocess.detectors import Detection, NoFaceError
from gphm.data.preprocess.frame_cache import CACHE_MARKER
from gphm.data.preprocess.multiview import PreprocessOptions, preprocess_capture
from gphm.data.preprocess.template import canonical_landmarks
from gphm.geometry.cameras import look_at
from gphm.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

ROOT = Path(__file__).resolve().parents[2]
H, W = 360, 384  # source images
OUT_H = 120  # stored resolution
CAMS = [f"cam{i}" for i in range(6)]
FRAMES = ["f000", "f001", "f002"]
BAD_CAM = "cam2"  # detections corrupted in every frame
UNREADABLE = "frames/f001/cam4.png"
NO_FACE = "frames/f002/cam5.png"


def _rot(aa) -> np.ndarray:
    return axis_angle_to_matrix(torch.tensor(aa, dtype=torch.float64)).numpy()


def make_capture(root: Path, seed: int = 0) -> dict:
    """Write the capture under ``root``; return the ground truth."""
    rng = np.random.default_rng(seed)
    shape = np.array(canonical_landmarks()) * 0.12 + rng.normal(scale=0.002, size=(68, 3))
    G = _rot([0.3, -0.4, 0.2])  # the source world is tilted w.r.t. canonical axes
    centre = np.array([0.2, 1.5, -0.3])
    cams = {}
    for i, cam in enumerate(CAMS):
        az, el = np.radians(-60 + 24 * i), np.radians(8 * (-1) ** i)
        eye = centre + G @ (
            1.0 * np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
        )
        V = look_at(*(torch.tensor(v) for v in (eye, centre, G[:, 1]))).numpy()
        K = np.array([[1800.0, 0, W / 2 - 0.5 + 3], [0, 1805.0, H / 2 - 0.5 - 2], [0, 0, 1]])
        cams[cam] = {"intrinsic": K.tolist(), "extrinsic": V[:3].tolist()}
    (root / "cameras.json").write_text(json.dumps(cams))
    poses, points, uv = [], [], {}
    for fi, frame in enumerate(FRAMES):
        R = G @ _rot(rng.normal(scale=0.15, size=3))
        T = centre + rng.normal(scale=0.01, size=3)
        X = shape @ R.T + T
        poses.append((R, T))
        points.append(X)
        (root / "frames" / frame).mkdir(parents=True)
        for cam in CAMS:
            rel = f"frames/{frame}/{cam}.png"
            K = np.array(cams[cam]["intrinsic"])
            K[:2, 2] += 0.5
            V = np.array(cams[cam]["extrinsic"])
            x = (X @ V[:, :3].T + V[:, 3]) @ K.T
            p = x[:, :2] / x[:, 2:] + rng.normal(scale=0.5, size=(68, 2))
            if cam == BAD_CAM:
                p = p + rng.normal(scale=25.0, size=(68, 2))
            uv[rel] = p
            if rel == UNREADABLE:
                (root / rel).write_bytes(b"not a png")
            else:
                Image.new("RGB", (W, H), (40 * fi, 90, 160)).save(root / rel)
    return {"shape": shape, "poses": poses, "points": points, "uv": uv, "cams": cams}


class NoSegmenter:
    name = "none"

    def segment(self, image: np.ndarray) -> np.ndarray:
        raise AssertionError("segmenter called")


class FakeDetector:
    """Returns the ground-truth projections stored for each image path."""

    name = "fake"

    def __init__(self, uv: dict[str, np.ndarray]):
        self.uv, self.calls = uv, 0

    def detect(self, image: np.ndarray, source: str | None = None) -> Detection:
        self.calls += 1
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        if source == NO_FACE:
            raise NoFaceError(source, "fake")
        lmk = self.uv[source]
        return Detection(lmk, np.r_[lmk.min(0), lmk.max(0)], 1.0, (H, W))


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture")
    return root, make_capture(root)


@pytest.fixture(scope="module")
def processed(capture, tmp_path_factory):
    root, gt = capture
    out = tmp_path_factory.mktemp("out") / "ds"
    det = FakeDetector(gt["uv"])
    opts = PreprocessOptions(detector="mediapipe", resolution=OUT_H, mask="hull", keep_cache=True)
    report = preprocess_capture(root, out, opts, detector=det, progress=False)
    return out, report, det


def _angle_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(matrix_to_axis_angle(torch.from_numpy(R)).numpy())))


def test_report_names_bad_and_outlier_views(processed):
    out, report, _ = processed
    skipped = {s["path"]: s["reason"] for s in report["skipped_views"]}
    assert skipped == {UNREADABLE: "unreadable", NO_FACE: "no_face"}
    assert {(o["frame"], o["camera"]) for o in report["outlier_views"]} == {
        (f, BAD_CAM) for f in FRAMES
    }
    assert report["skipped_frames"] == []
    assert report["rows"] == len(FRAMES) * len(CAMS) - 2  # bad images left out, outliers kept
    assert report["filled_landmarks"] == 0


def test_landmarks_and_head_pose_match_ground_truth(processed, capture):
    out, _, _ = processed
    _, gt = capture
    ds, meta = load_dataset_dir(out)
    ct = meta["canonical_transform"]
    s0, R0, T0 = ct["scale"], np.array(ct["R"]), np.array(ct["T"])
    head_size = np.linalg.norm(gt["shape"][:, None] - gt["shape"][None], axis=-1).max()
    rows = {r["frame"]: r for r in ds}  # any row of each frame: they share pose and landmarks
    assert sorted(rows) == [0, 1, 2]
    rel = []
    for f in range(len(FRAMES)):
        lmk = np.array(rows[f]["landmarks_3d"], dtype=np.float64)
        source = (lmk - T0) @ R0 / s0  # dataset world -> source world
        err = np.linalg.norm(source - gt["points"][f], axis=1)
        assert err.max() < 0.01 * head_size, (f, err.max() / head_size)
        R_est = np.array(rows[f]["head_R"], dtype=np.float64)
        R_gt = R0 @ gt["poses"][f][0]  # GT rotation seen in dataset world
        rel.append(R_est.T @ R_gt)  # constant (canonical → GT model axes) for all frames
        assert rows[f]["head_scale"] == pytest.approx(1.0)
    for f in (1, 2):
        assert _angle_deg(rel[f] @ rel[0].T) < 1.0
    # The canonical head is upright and faces +z: eyes above mouth, nose tip in front.
    lmk0 = np.array(rows[0]["landmarks_3d"])
    R_h = np.array(rows[0]["head_R"])
    canon = (lmk0 - np.array(rows[0]["head_T"])) @ R_h
    assert np.abs(canon).max() < 0.9  # the template's size: the head fits in about ±0.9
    assert canon[36:48, 1].mean() > canon[48:68, 1].mean()
    assert canon[30, 2] > canon[36:48, 2].mean()
    assert canon[36:42, 0].mean() < canon[42:48, 0].mean()  # subject's right eye at -x


def test_cameras_reproject_landmarks(processed, capture):
    out, _, _ = processed
    _, gt = capture
    ds, meta = load_dataset_dir(out)
    assert meta["image_size"] == [OUT_H, round(W * OUT_H / H)]
    assert meta["landmark_convention"] == "ibug68"
    scale = OUT_H / H
    for r in ds:
        if r["camera"] == BAD_CAM:
            continue
        K, V = np.array(r["K"], np.float64), np.array(r["viewmat"], np.float64)
        X = np.array(r["landmarks_3d"], np.float64)
        x = (X @ V[:3, :3].T + V[:3, 3]) @ K.T
        uv = x[:, :2] / x[:, 2:]
        want = gt["uv"][f"frames/{FRAMES[r['frame']]}/{r['camera']}.png"] * scale
        assert np.abs(uv - want).max() < 2.0 * scale + 0.05
        mask = np.asarray(r["mask"])
        assert mask.shape == tuple(meta["image_size"]) and mask.max() == 255


def test_first_frame_template(capture, tmp_path):
    """template=first: frame 0 defines canonical space, so its head pose is the identity."""
    root, gt = capture
    opts = PreprocessOptions(mask="hull", template="first", drop_outlier_views=True)
    report = preprocess_capture(
        root, tmp_path / "ds", opts, detector=FakeDetector(gt["uv"]), progress=False
    )
    assert report["rows"] == len(FRAMES) * (len(CAMS) - 1) - 2  # outlier views dropped too
    ds, meta = load_dataset_dir(tmp_path / "ds")
    assert BAD_CAM not in set(ds["camera"])
    r0 = next(r for r in ds if r["frame"] == 0)
    assert _angle_deg(np.array(r0["head_R"], np.float64)) < 0.5
    assert np.abs(np.array(r0["head_T"])).max() < 0.01
    assert meta["image_size"] == [H, W]  # resolution=0 keeps the source size


def test_resume_uses_cache_and_is_deterministic(processed, capture, tmp_path):
    out, report, _ = processed
    root, gt = capture
    cache = out.with_name(out.name + ".cache")
    assert sorted(p.name for p in cache.iterdir()) == [CACHE_MARKER, *(f"{f}.npz" for f in FRAMES)]
    (cache / "f001.npz").unlink()  # as if interrupted before frame f001 finished
    det = FakeDetector(gt["uv"])
    opts = PreprocessOptions(resolution=OUT_H, mask="hull", cache=str(cache))
    out2 = tmp_path / "ds2"
    rep2 = preprocess_capture(root, out2, opts, detector=det, progress=False)
    assert det.calls == len(CAMS) - 1  # only f001 again (its unreadable image is not detected)
    assert rep2["frames_reused_from_cache"] == 2
    assert not cache.exists()  # removed after success without keep_cache
    for name in ("meta.json",):
        a = json.loads((out / name).read_text())
        b = json.loads((out2 / name).read_text())
        a["generator"].pop("options"), b["generator"].pop("options")
        assert a == b
    arrow = sorted(p.name for p in out.glob("*.arrow"))
    assert arrow and all((out / n).read_bytes() == (out2 / n).read_bytes() for n in arrow)


def test_user_masks(capture, tmp_path):
    root, gt = capture
    src = tmp_path / "cap"
    shutil.copytree(root, src)
    (src / "masks" / "f000").mkdir(parents=True)
    user = np.zeros((H, W), np.uint8)
    user[60:300, 100:280] = 255
    for cam in CAMS:
        Image.fromarray(user).save(src / "masks" / "f000" / f"{cam}.png")
    opts = PreprocessOptions(mask="auto", resolution=OUT_H // 2, cache=str(tmp_path / "c"))
    # mask=auto: frames without user masks need the segmenter (a fake that refuses here).
    with pytest.raises(AssertionError, match="segmenter called"):
        preprocess_capture(
            src,
            tmp_path / "ds",
            opts,
            detector=FakeDetector(gt["uv"]),
            segmenter=NoSegmenter(),
            progress=False,
        )
    opts = PreprocessOptions(mask="user", resolution=OUT_H // 2, cache=str(tmp_path / "c"))
    with pytest.raises(CaptureError, match="masks/f001/cam0.png: file not found"):
        preprocess_capture(src, tmp_path / "ds", opts, detector=FakeDetector(gt["uv"]))
    shutil.rmtree(src / "frames" / "f001")
    shutil.rmtree(src / "frames" / "f002")
    preprocess_capture(src, tmp_path / "ds", opts, detector=FakeDetector(gt["uv"]), progress=False)
    ds, _ = load_dataset_dir(tmp_path / "ds")
    want = np.asarray(Image.fromarray(user).resize((W // 6, H // 6), Image.BOX))
    for r in ds:
        assert np.abs(np.asarray(r["mask"]).astype(int) - want).max() <= 1
    Image.fromarray(user[:10]).save(src / "masks" / "f000" / "cam1.png")
    opts = PreprocessOptions(mask="user", cache=str(tmp_path / "c2"))
    with pytest.raises(CaptureError, match=r"masks/f000/cam1.png: mask is 10x384"):
        preprocess_capture(src, tmp_path / "ds2", opts, detector=FakeDetector(gt["uv"]))


def test_strict_refuses_bad_image(capture, tmp_path):
    root, gt = capture
    opts = PreprocessOptions(mask="hull", strict=True, cache=str(tmp_path / "c"))
    with pytest.raises(CaptureError, match="f001/cam4.png"):
        preprocess_capture(
            root, tmp_path / "ds", opts, detector=FakeDetector(gt["uv"]), progress=False
        )
    assert not (tmp_path / "ds").exists()


def test_bad_input_messages(capture, tmp_path):
    root, gt = capture
    with pytest.raises(ValueError, match="mask must be one of"):
        PreprocessOptions(mask="magic")
    with pytest.raises(ValueError, match="detector must be one of"):
        PreprocessOptions(detector="dlib")
    bad = tmp_path / "bad"
    (bad / "frames" / "0").mkdir(parents=True)
    cams = json.loads((root / "cameras.json").read_text())
    cams["cam0"]["extrinsic"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    (bad / "cameras.json").write_text(json.dumps(cams))
    with pytest.raises(
        CaptureError, match=r"cameras.json: camera 'cam0': field 'extrinsic' has shape \(3, 3\)"
    ):
        preprocess_capture(bad, tmp_path / "o", detector=FakeDetector({}), progress=False)
    (bad / "cameras.json").write_text(
        json.dumps({"cam0": json.loads((root / "cameras.json").read_text())["cam0"]})
    )
    Image.new("RGB", (8, 8)).save(bad / "frames" / "0" / "camX.png")
    with pytest.raises(CaptureError, match="frames/0/camX.png: camera 'camX' has no calibration"):
        preprocess_capture(bad, tmp_path / "o", detector=FakeDetector({}), progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_cache_with_user_files_is_never_used_nor_deleted(capture, tmp_path):
    root, gt = capture
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    (user / "f000.npz").write_bytes(b"my own npz")
    opts = PreprocessOptions(mask="hull", resolution=OUT_H // 2, cache=str(user))
    with pytest.raises(CaptureError, match=rf"cache={user} is a non-empty folder that is not a"):
        preprocess_capture(root, tmp_path / "ds", opts, detector=FakeDetector(gt["uv"]))
    assert _tree(user) == {"thesis.tex": b"precious", "f000.npz": b"my own npz"}
    assert not (tmp_path / "ds").exists()

    # Our own (marked) cache: after success only our files go; what a user added stays.
    ours = tmp_path / "ours"
    opts = PreprocessOptions(mask="hull", resolution=OUT_H // 2, cache=str(ours), keep_cache=True)
    preprocess_capture(root, tmp_path / "ds", opts, detector=FakeDetector(gt["uv"]), progress=False)
    assert (ours / CACHE_MARKER).is_file()
    (ours / "notes.txt").write_text("added later")
    (ours / ".f001.x1y2.npz").write_bytes(b"torn")  # a killed run's temporary file
    opts = PreprocessOptions(mask="hull", resolution=OUT_H // 2, cache=str(ours))
    det = FakeDetector(gt["uv"])
    preprocess_capture(root, tmp_path / "ds2", opts, detector=det, progress=False)
    assert det.calls == 0  # every frame reused from the cache
    assert set(_tree(ours)) == {"notes.txt", CACHE_MARKER}  # still ours, notes kept
    (ours / "notes.txt").unlink()
    preprocess_capture(root, tmp_path / "ds2", opts, overwrite=True, detector=det, progress=False)
    assert not ours.exists()  # nothing else in it: removed
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is adopted, and removed after success
    opts = PreprocessOptions(mask="hull", resolution=OUT_H // 2, cache=str(empty))
    preprocess_capture(
        root, tmp_path / "ds3", opts, detector=FakeDetector(gt["uv"]), progress=False
    )
    assert not empty.exists()


def test_out_and_cache_must_not_touch_the_capture(capture, tmp_path):
    root, gt = capture
    src = tmp_path / "cap"
    shutil.copytree(root, src)
    before = _tree(src)
    det = FakeDetector(gt["uv"])
    cases = [
        (src, None, rf"out={src} is the capture src={src}"),
        (src / "ds", None, rf"out={src / 'ds'} is inside the capture src={src}"),
        (tmp_path, None, rf"out={tmp_path} contains the capture src={src}"),
        (tmp_path / "o", src, rf"cache={src} is the capture src={src}"),
        (tmp_path / "o", tmp_path, rf"cache={tmp_path} contains the capture src={src}"),
        (tmp_path / "o", tmp_path / "o", rf"cache={tmp_path / 'o'} is out="),
        (tmp_path / "o", tmp_path / "o" / "c", r"cache=.* is inside out="),
    ]
    for out, cache, message in cases:
        opts = PreprocessOptions(mask="hull", cache=None if cache is None else str(cache))
        with pytest.raises(CaptureError, match=message):
            preprocess_capture(src, out, opts, overwrite=True, detector=det, progress=False)
    assert det.calls == 0 and _tree(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap"]
    # overwrite replaces a dataset only, never a folder of user files
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("mine")
    opts = PreprocessOptions(mask="hull", cache=str(tmp_path / "c"))
    with pytest.raises(FileExistsError, match="docs is a non-empty folder that is not a gphm"):
        preprocess_capture(src, tmp_path / "docs", opts, overwrite=True, detector=det)
    assert (tmp_path / "docs" / "a.txt").read_text() == "mine"


def test_val_cameras(capture, tmp_path):
    root, gt = capture
    opts = PreprocessOptions(
        mask="hull", resolution=OUT_H // 2, heldout_cameras=["cam0"], val_cameras=["cam1"]
    )
    opts.cache = str(tmp_path / "c")
    preprocess_capture(root, tmp_path / "ds", opts, detector=FakeDetector(gt["uv"]), progress=False)
    ds, meta = load_dataset_dir(tmp_path / "ds")
    rows = ds.select_columns(["camera", "split"]).to_list()
    assert {r["camera"] for r in rows if r["split"] == "val_view"} == {"cam1"}
    assert {r["camera"] for r in rows if r["split"] == "heldout_view"} == {"cam0"}
    assert meta["split_sizes"]["val_view"] == meta["split_sizes"]["heldout_view"] == len(FRAMES)
    with pytest.raises(
        ValueError,
        match=r"cameras \['cam0'\] are in both heldout_cameras=\['cam0'\] and "
        r"val_cameras=\['cam0', 'cam1'\]",
    ):
        PreprocessOptions(heldout_cameras=["cam0"], val_cameras=["cam0", "cam1"])
    opts = PreprocessOptions(mask="hull", val_cameras=["camZ"], cache=str(tmp_path / "c"))
    with pytest.raises(CaptureError, match=r"val_cameras: \['camZ'\] not among the cameras"):
        preprocess_capture(root, tmp_path / "ds2", opts, detector=FakeDetector(gt["uv"]))


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "preprocess_cli", ROOT / "scripts" / "preprocess.py"
    )
    cli = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cli  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(cli)
    return cli


def test_cli(capture, tmp_path, monkeypatch, capsys):
    root, gt = capture
    cli = _load_cli()
    monkeypatch.setitem(detectors._BACKENDS, "fake", lambda: FakeDetector(gt["uv"]))
    monkeypatch.delitem(detectors._CACHE, "fake", raising=False)
    out = tmp_path / "ds"
    argv = [f"src={root}", f"out={out}", "detector=fake", "mask=hull", "heldout_cameras=[cam0]"]
    assert cli.run_cli(cli.PreprocessConfig, cli.main, argv=argv, summary=cli.summary) == 0
    line = capsys.readouterr().out
    assert "2 bad view(s), 3 outlier view(s)" in line
    report = json.loads((out / "preprocess_report.json").read_text())
    assert {s["path"] for s in report["skipped_views"]} == {UNREADABLE, NO_FACE}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["split_sizes"]["heldout_view"] == len(FRAMES)
    # Bad input: exit status 2 with one line naming the problem.
    for bad, msg in (
        (
            [f"src={tmp_path / 'nope'}", f"out={tmp_path / 'x'}", "detector=fake"],
            "capture folder not found",
        ),
        ([f"src={root}", f"out={out}", "detector=fake"], "already exists"),
        ([f"src={root}", f"out={root}", "overwrite=true"], "is the capture src="),
        (
            [
                f"src={root}",
                f"out={tmp_path / 'y'}",
                "heldout_cameras=[cam0]",
                "val_cameras=[cam0]",
            ],
            "are in both heldout_cameras=['cam0'] and val_cameras=['cam0']",
        ),
        ([f"src={root}", f"out={tmp_path / 'y'}", "detector=dlib"], "detector must be one of"),
        ([f"src={root}", f"out={tmp_path / 'y'}", "maks=hull"], "unknown option 'maks'"),
        ([f"src={root}"], "missing required option out"),
    ):
        assert cli.run_cli(cli.PreprocessConfig, cli.main, argv=bad) == 2
        assert msg in capsys.readouterr().err
    detectors._CACHE.pop("fake", None)

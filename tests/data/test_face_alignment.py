"""The ``face_alignment`` detector backend end to end, on the package's own networks.

face-alignment's weights cannot be downloaded here, so seeded weights of its own model
classes (``FAN(4)`` for 2DFAN-4, ``s3fd`` for the SFD face detector) are written into a
temporary torch hub cache under the file names its URLs give; every download is made to
fail. The seeded FAN runs on the crop the package makes, and a forward hook then replaces
its heat maps with those of a stand-in "network" that finds the reddest spot of that crop:
landmark ``k`` peaks at that spot plus a distinct offset ``OFFSETS[k]`` (in heat-map
cells). The photo holds one red and one blue pixel, so what gphm reports shows

* the colour order of the call (given BGR, the stand-in would find the blue pixel),
* x and y (the photo is not square and the red pixel is off the diagonal),
* the pixel convention: the red pixel's index is (117, 61), so ours, with pixel centres
  at (i + 0.5, j + 0.5), is (117.5, 61.5); an offset of half a pixel fails,
* the 68-point order: landmark k of gphm must be heat map k's peak (iBUG order is FAN's).

face-alignment truncates its crop corner and its output to whole pixels, so it resolves
one pixel at best. The face box is chosen so both truncations are exact: 64 image pixels
across the crop (``scale = (w + h) / 195 = 0.32``, one image pixel per heat-map cell),
crop corner at whole pixels, and FAN's continuous estimate 0.1 px from the red pixel's
centre, so that the truncated index is the red pixel's.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gphm.data.preprocess import detectors

fa = pytest.importorskip("face_alignment", reason="face-alignment not installed")

pytestmark = pytest.mark.slow  # numba compiles face-alignment's post-processing on first use

H, W = 160, 200
RED = (117, 61)  # (column, row) pixel index of the red pixel
BLUE = (110, 66)
# Box (x0, y0, x1, y1): centre x = 116.1, centre y = y0 + 0.38 h = 62.1, w + h = 62.4.
BOX = np.array([100.5, 50.244, 131.7, 81.444])
OFFSETS = np.stack([np.arange(68) % 9 - 4, np.arange(68) // 9 - 4], -1)  # [68, 2] (dx, dy)
PEAKS = 0.4 + 0.005 * np.arange(68)  # heat-map peak of landmark k, so score = their mean


def _hub_names() -> dict[str, str]:
    """The checkpoint file names face-alignment looks for, from its own download URLs."""
    from face_alignment.api import models_urls as fan_urls
    from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls

    return {"fan": os.path.basename(fan_urls["2DFAN-4"]), "sfd": os.path.basename(sfd_urls["s3fd"])}


@pytest.fixture(scope="module")
def seeded_hub(tmp_path_factory):
    """A torch hub folder whose checkpoints are seeded FAN(4) and s3fd weights (float16)."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    hub = tmp_path_factory.mktemp("torch_hub")
    (hub / "checkpoints").mkdir()
    names = _hub_names()
    for seed, (key, make) in enumerate([("fan", lambda: FAN(4)), ("sfd", s3fd)]):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            state = make().state_dict()
        half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save(half, hub / "checkpoints" / names[key])
    return hub


@pytest.fixture
def offline_hub(seeded_hub, monkeypatch):
    def no_download(url, *args, **kwargs):
        raise AssertionError(f"face-alignment tried to download {url}")

    import face_alignment.utils

    monkeypatch.setattr(torch.hub, "_hub_dir", str(seeded_hub))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(face_alignment.utils, "download_url_to_file", no_download)
    return seeded_hub


def photo() -> np.ndarray:
    image = np.full((H, W, 3), 110, np.uint8)
    image[RED[1], RED[0]] = (255, 0, 0)
    image[BLUE[1], BLUE[0]] = (0, 0, 255)
    return image


def stand_in_heatmaps(crop: torch.Tensor) -> torch.Tensor:
    """[1, 68, 64, 64] heat maps peaking at the crop's reddest spot + ``OFFSETS``.

    ``crop``: [1, 3, 256, 256] in [0, 1], as FAN receives it; heat-map cell c covers crop
    pixels 4c .. 4c + 3 (two stride-2 stages).
    """
    rgb = crop[0].double()
    redness = rgb[0] - torch.maximum(rgb[1], rgb[2])
    ys, xs = torch.nonzero(redness > 0.5 * redness.max(), as_tuple=True)
    cx = round((float(xs.double().mean()) - 1.5) / 4)
    cy = round((float(ys.double().mean()) - 1.5) / 4)
    heat = torch.zeros(1, 68, 64, 64)
    for k, (dx, dy) in enumerate(OFFSETS):
        heat[0, k, cy + dy, cx + dx] = float(PEAKS[k])
    return heat


def test_face_alignment_backend_end_to_end(offline_hub, monkeypatch):
    det = detectors.FaceAlignmentDetector()  # finds the (seeded) weights in the hub cache
    model = det._fa
    assert model.flip_input is False
    seen: dict[str, object] = {}

    real_detect = model.face_detector.detect_from_image

    def detect_from_image(image):
        seen["sfd_input"] = image.copy()
        real_detect(image)  # the seeded s3fd runs on the image; its boxes are noise
        return [np.r_[BOX, 0.99]]

    monkeypatch.setattr(model.face_detector, "detect_from_image", detect_from_image)

    def hook(module, inputs, outputs):
        (crop,) = inputs
        seen["crop"] = crop.clone()
        assert isinstance(outputs, list) and len(outputs) == 4  # FAN(4): one per hourglass
        assert outputs[-1].shape == (1, 68, 64, 64) and torch.isfinite(outputs[-1]).all()
        return [*outputs[:-1], stand_in_heatmaps(crop)]

    model.face_alignment_net.register_forward_hook(hook)
    image = photo()
    found = det.detect(image, source="photo.png")

    # the call: the RGB uint8 image as it is, and a [0, 1] float crop of it, channels R, G, B
    np.testing.assert_array_equal(seen["sfd_input"], image)
    crop = seen["crop"]
    assert crop.shape == (1, 3, 256, 256) and crop.dtype == torch.float32
    assert float(crop[0, 0].max()) > 0.7 and float(crop[0, 2].max()) > 0.7  # bilinear 4x
    reddest = np.unravel_index(int((crop[0, 0] - crop[0, 2]).argmax()), (256, 256))
    bluest = np.unravel_index(int((crop[0, 2] - crop[0, 0]).argmax()), (256, 256))
    assert reddest[1] > bluest[1] and reddest[0] < bluest[0]  # red right of and above blue

    # the output: pixel centres at (i + 0.5, j + 0.5), (u, v) order, landmark k = heat map k
    expected = np.asarray(RED, np.float64) + 0.5 + OFFSETS
    assert found.landmarks68.shape == (68, 2) and found.landmarks68.dtype == np.float64
    np.testing.assert_allclose(found.landmarks68, expected, atol=0.25)
    assert found.image_size == (H, W)
    assert found.score == pytest.approx(PEAKS.mean(), abs=1e-6)
    np.testing.assert_allclose(found.box, BOX + 0.5)


def test_face_alignment_needs_both_cached_weights(offline_hub, tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    fan_file = _hub_names()["fan"]
    (tmp_path / "checkpoints" / fan_file).symlink_to(offline_hub / "checkpoints" / fan_file)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(detectors.BackendUnavailableError, match=r"\['s3fd'\] not found"):
        detectors.FaceAlignmentDetector()


def test_face_alignment_not_installed_says_the_pinned_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "face_alignment" else real(n, *a)
    )
    with pytest.raises(detectors.BackendUnavailableError, match="--no-deps face-alignment==1.5.0"):
        detectors.FaceAlignmentDetector()

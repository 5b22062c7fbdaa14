"""Real-image preprocessing timings (issue 8): landmarks on one 512² photo.

``python scripts/bench.py preprocess`` calls :func:`run`. The photo is scikit-image's
astronaut (512×512, one face). Each figure is the median over repeats after warm-up
calls (the MediaPipe graphs are built and warm), in seconds. Target: landmarks in
≤ 100 ms on a CPU.
"""

from __future__ import annotations

import importlib.util
import platform
import time

from benchmarks._timing import median_time

TARGETS_S = {"landmarks_512": 0.100}


def run(quick: bool = False) -> dict:
    """Time detection, segmentation and prepare_image; returns a JSON-able dict."""
    out: dict = {"suite": "preprocess", "machine": platform.machine(), "quick": quick}
    out["targets_s"] = TARGETS_S
    if importlib.util.find_spec("mediapipe") is None:
        out["available"] = False
        out["reason"] = "mediapipe not installed (see gphm/data/preprocess/detectors.py)"
        return out
    from skimage import data

    from gphm.data.preprocess import get_detector, get_segmenter, prepare_image

    image = data.astronaut()  # [512, 512, 3] uint8
    repeats = 10 if quick else 50
    detector, segmenter = get_detector("mediapipe"), get_segmenter("mediapipe")
    t0 = time.perf_counter()
    detector.detect(image)
    out["available"] = True
    out["first_call_s"] = time.perf_counter() - t0
    out["landmarks_512"] = median_time(lambda: detector.detect(image), repeats, warmup=3)
    out["segmentation_512"] = median_time(lambda: segmenter.segment(image), repeats, warmup=3)
    out["prepare_image_512"] = median_time(
        lambda: prepare_image(image, out_size=512), max(3, repeats // 5), warmup=3
    )
    for key, target in TARGETS_S.items():
        out[f"{key}_within_target"] = out[key] <= target
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

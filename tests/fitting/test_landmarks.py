"""NME against hand-labelled landmarks (gphm.fitting.landmarks)."""

import numpy as np
import pytest

from gphm.data.preprocess.single_image import Framing, write_pts
from gphm.fitting.landmarks import inter_ocular, nme, nme_against_pts


def test_nme_is_the_mean_error_over_the_outer_eye_corner_distance(tmp_path):
    truth = Framing().landmarks(256)
    iod = np.linalg.norm(truth[45] - truth[36])
    assert inter_ocular(truth) == pytest.approx(iod)
    shifted = truth + [3.0, 4.0]  # every point 5 px off
    assert nme(shifted, truth) == pytest.approx(5.0 / iod)
    partial = shifted.copy()
    partial[:10] = np.nan  # unannotated rows are left out
    assert nme(partial, truth) == pytest.approx(5.0 / iod)
    pts = write_pts(tmp_path / "t.pts", truth)  # iBUG file, 1-based: read back exactly
    assert nme_against_pts(shifted, pts) == pytest.approx(5.0 / iod, rel=1e-5)
    with pytest.raises(ValueError, match=r"expected iBUG-68 landmarks \[68, 2\]"):
        inter_ocular(truth[:5])
    with pytest.raises(ValueError, match="no landmark is finite"):
        nme(np.full((68, 2), np.nan), truth)

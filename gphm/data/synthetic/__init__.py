"""Built-in synthetic multi-identity head dataset (issue 4).

A procedural morphable head (:mod:`.head`: one deformed geodesic sphere, closed and
genus 0, with cranium, face, jaw, nose, ears, eye sockets with eyeballs, lips, brows and
hair), named identity / appearance / expression parameters (:mod:`.params`), 68 iBUG
landmarks at fixed vertices (:mod:`.landmarks`), rendering through
:func:`gphm.render.mesh.render_mesh` (:mod:`.render`) and the dataset writer
(:mod:`.generate`, CLI ``scripts/make_synthetic.py``). :mod:`.truth` renders the
generator's truth on demand (any subject, expression, pose and camera; the neutral twins
that expression metrics compare against): ``from gphm.data.synthetic.truth import
DatasetTruth``.

    from gphm.data.synthetic import build_template, make_head, sample_identity, EXPRESSIONS
    template = build_template()
    head = make_head(template, sample_identity(np.random.default_rng(0)), EXPRESSIONS["smile_l"])
"""

from gphm.data.synthetic.config import MakeSyntheticConfig
from gphm.data.synthetic.head import HeadMesh, HeadTemplate, build_template, make_head
from gphm.data.synthetic.landmarks import NUM_LANDMARKS
from gphm.data.synthetic.params import (
    EXPRESSION_NAMES,
    EXPRESSIONS,
    AppearanceParams,
    ExpressionParams,
    IdentityParams,
    ShapeParams,
    sample_identity,
)

__all__ = [
    "EXPRESSIONS",
    "EXPRESSION_NAMES",
    "NUM_LANDMARKS",
    "AppearanceParams",
    "ExpressionParams",
    "HeadMesh",
    "HeadTemplate",
    "IdentityParams",
    "MakeSyntheticConfig",
    "ShapeParams",
    "build_template",
    "make_head",
    "sample_identity",
]

"""Animatable export for 3D Gaussian Splatting engines (docs/architecture.md §3.7, §8.5).

One identity of a trained model as standard 3DGS PLYs (neutral and one per trained
expression) plus a linear expression basis (``blendshapes.npz`` / ``.json``) an engine can
blend without our networks; see :mod:`gphm.export.animatable` for the files and their
conventions, :mod:`gphm.export.blendshapes` for the basis and :mod:`gphm.export.fidelity`
for how well K components reproduce the model.
"""

from gphm.export.animatable import (
    ExportExistsError,
    ExportReport,
    export_animatable,
    load_expression_basis,
    save_splat_ply,
)
from gphm.export.blendshapes import ExpressionBasis, SplatAttributes, fit_expression_basis
from gphm.export.fidelity import CurvePoint, FidelityOptions, FidelityReport, splat_rgb
from gphm.export.run import ExportIdentity, export_run, resolve_identity, trained_expressions

__all__ = [
    "CurvePoint",
    "ExportExistsError",
    "ExportIdentity",
    "ExportReport",
    "ExpressionBasis",
    "FidelityOptions",
    "FidelityReport",
    "SplatAttributes",
    "export_animatable",
    "export_run",
    "fit_expression_basis",
    "load_expression_basis",
    "resolve_identity",
    "save_splat_ply",
    "splat_rgb",
    "trained_expressions",
]

"""gphm: a generalized multi-identity 3D Gaussian parametric head model."""

__version__ = "0.1.0"

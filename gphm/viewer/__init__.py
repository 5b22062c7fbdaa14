"""The web viewer: a page with identity / expression / camera controls over a trained
run, served by a small HTTP server that renders the full model output on demand
(:mod:`gphm.viewer.server`, :mod:`gphm.viewer.scene`); the page previews the Gaussians
in WebGL2 while the camera is dragged. Command: ``gphm-view`` (:mod:`gphm.cli.view`)."""

from gphm.viewer.scene import BadRequest, Scene, ViewRequest, find_avatars
from gphm.viewer.server import RenderGate, ViewerServer

__all__ = ["BadRequest", "RenderGate", "Scene", "ViewRequest", "ViewerServer", "find_avatars"]

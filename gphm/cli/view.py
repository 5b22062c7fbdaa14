"""``gphm-view`` (``scripts/view.py``): serve the web viewer of a trained run.

    python scripts/view.py checkpoint=RUN [port=8080] [host=127.0.0.1]
        [avatars=[DIR,...]] [device=auto|cpu|cuda[:N]] [threads=0] [verbose=false]

Open the printed URL (the page: :mod:`gphm.viewer`);
``GET /render.png?identity=…&expression=…&yaw=…&pitch=…&size=…`` returns one picture
(see :mod:`gphm.viewer.server`). Serves until Ctrl-C, then prints a one-line summary
(renders served, stale requests dropped).
"""

from __future__ import annotations

import errno
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import MISSING

from gphm.cli import UserError, check_device_option, cli_device, run_cli
from gphm.viewer.scene import Scene
from gphm.viewer.server import ViewerServer

__all__ = ["ViewConfig", "cli", "main", "summary"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ViewConfig:
    checkpoint: str = MISSING
    """Run directory (or its model/ directory)."""
    port: int = 8080
    """TCP port; 0 picks a free one (printed)."""
    host: str = "127.0.0.1"
    """Interface to listen on. Anything but the loopback exposes the model to the network
    (no authentication): give it explicitly if that is what you want."""
    avatars: list[str] = field(default_factory=list)
    """Folders searched for fitted avatars (directories holding avatar.json)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N (renders with gsplat on CUDA, the
    torch rasterizer on the CPU)."""
    threads: int = 0
    """torch CPU threads for rendering; 0 keeps torch's default."""
    verbose: bool = False
    """Log every request to stderr (errors are always logged)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        check_device_option(self.device)


def _scene(cfg: ViewConfig) -> Scene:
    device = cli_device(cfg.device)
    try:
        return Scene.open(cfg.checkpoint, cfg.avatars, device=device)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise UserError(str(err)) from None


def main(cfg: ViewConfig) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scene = _scene(cfg)
    try:
        server = ViewerServer(scene, cfg.host, cfg.port, verbose=cfg.verbose)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            msg = f"port={cfg.port}: already in use; pick another (port=0: any free one)"
        else:
            msg = f"host={cfg.host} port={cfg.port}: cannot listen ({err.strerror})"
        raise UserError(msg) from None
    if cfg.host not in LOOPBACK:
        print(f"[viewer] warning: listening on {cfg.host}, reachable from the network",
              file=sys.stderr)  # fmt: skip
    print(f"[viewer] {type(scene.model).__name__}: {len(scene.subjects)} subjects, "
          f"{len(scene.avatars)} avatars, {len(scene.labels)} expressions; open {server.url}",
          flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    gate = server.gate
    return {"url": server.url, "rendered": gate.rendered, "dropped_stale": gate.dropped}


def summary(report: dict[str, Any]) -> str:
    return (f"viewer at {report['url']} stopped: {report['rendered']} renders, "
            f"{report['dropped_stale']} stale requests dropped")  # fmt: skip


def cli(argv: list[str] | None = None) -> int:
    """The ``view`` command: parse ``argv`` (default: the process's), serve, summarise."""
    return run_cli(ViewConfig, main, argv, summary=summary)


if __name__ == "__main__":
    sys.exit(cli())

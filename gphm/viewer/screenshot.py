"""Take a headless-chromium screenshot of the viewer page (README figure, bug reports).

    python -m gphm.viewer.screenshot RUN OUT.png [--query "identity=a&yaw=30"]
        [--avatars DIR ...] [--window 900x600]

Serves RUN on a free 127.0.0.1 port from this process, opens ``/?QUERY`` in headless
chromium (networking extras off, its own temporary profile) and writes the PNG
atomically. Needs a ``chromium`` (or ``chromium-browser`` / ``google-chrome``) on PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gphm.io.atomic import atomic_write_bytes
from gphm.viewer.scene import Scene
from gphm.viewer.server import ViewerServer

__all__ = ["find_browser", "screenshot"]

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((shutil.which(n) for n in BROWSERS if shutil.which(n)), None)


def screenshot(url: str, out: str | Path, window: tuple[int, int] = (900, 600),
               timeout: float = 60.0) -> Path:  # fmt: skip
    """Screenshot ``url`` (the page's script runs until idle) into ``out``."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(f"no browser found (looked for {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory(prefix="gphm_shot_") as tmp:
        shot = Path(tmp) / "shot.png"
        args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={Path(tmp) / 'profile'}",
                "--force-device-scale-factor=1", f"--window-size={window[0]},{window[1]}",
                "--virtual-time-budget=10000", f"--screenshot={shot}", url]  # fmt: skip
        subprocess.run(args, capture_output=True, timeout=timeout, check=True, cwd=tmp)
        return atomic_write_bytes(out, shot.read_bytes())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("--query", default="", help="the view, e.g. identity=a&yaw=30")
    p.add_argument("--avatars", nargs="*", default=[])
    p.add_argument("--window", default="900x600", help="WIDTHxHEIGHT")
    args = p.parse_args(argv)
    try:
        window = tuple(int(v) for v in args.window.lower().split("x"))
        if len(window) != 2:
            raise ValueError
    except ValueError:
        p.error(f"--window: expected WIDTHxHEIGHT, got {args.window!r}")
    try:
        scene = Scene.open(args.run, args.avatars)
        with ViewerServer(scene, "127.0.0.1", 0) as server:
            path = screenshot(server.url + ("?" + args.query if args.query else ""), args.out,
                              window)  # fmt: skip
    except (FileNotFoundError, ValueError, subprocess.SubprocessError) as err:
        print(f"screenshot: error: {err}", file=sys.stderr)
        return 2
    print(f"screenshot: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

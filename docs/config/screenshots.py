"""Serve the built site and take headless Chromium screenshots of a few pages.

    python docs/config/screenshots.py [SITE] [OUT]

SITE is the built site (default ``build/docs``, where the docs command writes it), OUT the
folder for the PNGs (default ``build/screenshots``). Each page is taken at a desktop width
(1280 px) and a phone width (390 px). Needs Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "home": "index.html",
    "tutorial": "tutorials/step-by-step.html",
    "howto": "how-to/jax-optax.html",
    "reference": "reference/layers.html",
}
WIDTHS = {"desktop": (1280, 1600), "phone": (390, 1800)}


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: apt-get install chromium")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main(site: Path, out: Path) -> int:
    if not (site / "index.html").is_file():
        raise SystemExit(f"{site} holds no built site: run the docs command in CONTRIBUTING.md first")
    out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = chromium()
    try:
        for name, page in PAGES.items():
            for width_name, (width, height) in WIDTHS.items():
                png = out / f"{name}-{width_name}.png"
                subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                f"--window-size={width},{height}", f"--screenshot={png}",
                                f"http://127.0.0.1:{server.server_port}/{page}"],
                               check=True, capture_output=True, timeout=120)
                print(f"wrote {png}")
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    site = Path(args[0]) if args else ROOT / "build" / "docs"
    out = Path(args[1]) if len(args) > 1 else ROOT / "build" / "screenshots"
    sys.exit(main(site, out))

"""Screenshot an HTML report in headless Chromium, to check by eye that it renders.

    python scripts/screenshot_report.py results/report.html report.png [--size 1400,2000]

Needs Debian's `chromium` (apt-get install chromium). Exits 2 with a one-line message when it is absent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(html: Path, png: Path, size: str = "1400,2000", timeout: float = 120.0) -> Path:
    """Render `html` headless (no network, no GPU, throwaway profile) and write `png`."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no chromium found; install it with `apt-get install -y chromium`")
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(f"{html}: no such report; write one with `fairbench report --to {html}`")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fairbench-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}", html.as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium ran but wrote no {png}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--size", default="1400,2000", help="window width,height in pixels")
    args = parser.parse_args(argv)
    try:
        path = screenshot(args.html, args.png, args.size)
    except (FileNotFoundError, RuntimeError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

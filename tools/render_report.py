"""Render a ``kdforge report`` page in headless Chromium and save a screenshot.

    python tools/render_report.py runs/report/report.html --output report.png
    python tools/render_report.py runs/ --output report.png        # builds the report first
    python tools/render_report.py runs/ --output docs/img/report.png --max-kb 400

Chromium is Debian's ``chromium`` package (``apt-get install -y chromium``); ``--browser``
names another binary (``google-chrome``, ``chromium-browser``). The screenshot shows the
page as a browser lays it out: look at it before committing a change to the report
(overlapping labels, empty plots, tables that run off the page). ``--max-kb`` shrinks the
PNG (a 256-colour palette, then a smaller width) until it fits.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser(name: str | None = None) -> str:
    for candidate in ([name] if name else BROWSERS):
        path = shutil.which(candidate)
        if path:
            return path
    sys.exit("render_report: no Chromium found; install it (apt-get install -y chromium) or "
             "name one with --browser")


def screenshot(html: Path, output: Path, *, width: int = 1400, height: int = 3000,
               browser: str | None = None, timeout: float = 120.0) -> Path:
    """Chromium's screenshot of ``html`` (a ``width`` x ``height`` window) in ``output``."""
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [find_browser(browser), "--headless", "--no-sandbox", "--disable-gpu",
                   "--hide-scrollbars", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                   f"--screenshot={output}", f"--window-size={width},{height}",
                   html.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not output.is_file():
        sys.exit(f"render_report: chromium failed ({done.returncode}): {done.stderr[-800:]}")
    return output


def shrink(path: Path, max_kb: int) -> None:
    """Re-encode ``path`` as a 256-colour PNG, narrower each round, until it fits."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = 1.0
    while True:
        size = (int(image.width * scale), int(image.height * scale))
        small = image.resize(size, Image.LANCZOS) if scale < 1.0 else image
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= max_kb * 1024 or scale < 0.4:
            return
        scale *= 0.85


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", help="a report.html, or run directories' folder to report on")
    parser.add_argument("--output", default="report.png", help="the screenshot (PNG)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--browser", default=None, help="the Chromium binary to use")
    parser.add_argument("--max-kb", type=int, default=None, help="shrink the PNG to this size")
    args = parser.parse_args(argv)
    page = Path(args.page)
    if page.is_dir():
        from kdforge.report.build import write_report

        page = write_report([page])["html"]
    shot = screenshot(page, Path(args.output), width=args.width, height=args.height,
                      browser=args.browser)
    if args.max_kb:
        shrink(shot, args.max_kb)
    print(f"{page} -> {shot} ({shot.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

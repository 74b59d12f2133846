"""Take the README's screenshots: launch the app, click an example, capture each tab at 1280x720.

    python scripts/screenshots.py [--weights none] [--out docs]

Needs Debian's chromium (/usr/bin/chromium) and playwright (the `test` extra).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import CHROMIUM, free_port, wait_until_serving  # noqa: E402
from tests.test_app_e2e import CHROMIUM_ARGS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--example", type=int, default=0, help="which example to click (0 = the first)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--weights", args.weights, "--port", str(port)],
                            cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, proc)
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url)
            page.locator("#examples button.gallery-item").nth(args.example).click()
            expect(page.locator("#status")).to_contain_text("ms in all", timeout=60_000)
            page.screenshot(path=str(out / "screenshot.png"))
            for name, slug in (("Filters", "filters"), ("Feature maps", "features"), ("Saliency", "saliency"),
                               ("Architecture", "architecture")):
                page.get_by_role("tab", name=name).click()
                if slug == "saliency":
                    page.locator("#compare").click()
                    expect(page.locator("#compare-image img")).to_be_visible(timeout=120_000)
                page.wait_for_timeout(500)
                page.screenshot(path=str(out / f"tab-{slug}.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(15)


if __name__ == "__main__":
    main()

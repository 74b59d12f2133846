"""Take the README's screenshots: launch the app, upload a photo, capture the tabs in Chromium at 1920x1080,
and once more in presenter mode (docs/screenshot.png, feature-maps.png, saliency.png, units.png, inside.png,
presenter.png).

    python scripts/screenshots.py [--weights none] [--out docs]

Needs Debian's chromium (/usr/bin/chromium) and playwright (the `test` extra).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package (and its app.py), not another one installed

from alexnet_viz.browser import Driver, Watch, with_page  # noqa: E402
from alexnet_viz.launcher import launched_app  # noqa: E402

ASSETS = ROOT / "assets"


def take(d: Driver, watch: Watch, out: Path, photo: Path) -> list[Path]:
    page = d.page
    written: list[Path] = []

    def shot(name: str, anchor: str | None = None) -> None:
        """The viewport, at the top of the page or with ``#anchor`` scrolled into view."""
        if anchor is None:
            page.evaluate("() => window.scrollTo(0, 0)")
        else:
            page.locator(f"#{anchor}").scroll_into_view_if_needed()
        path = out / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled")  # not mid fade-in of a new picture
        written.append(path)

    d.upload(photo)
    shot("screenshot")  # the README's first picture: the Filters tab after an upload
    d.tab("Feature maps")
    d.choose("layer", "conv2")
    d.wait_text("layer-info", r"^conv2\b")
    d.click_picture("layer-grid", 0.3, 0.2)
    d.wait_text("layer-info", r"showing channel")
    shot("feature-maps", "layer-grid")
    d.tab("Saliency")
    d.choose("method", "Integrated gradients")
    before = d.text("attribution-info")
    page.locator("#explain").click()
    d.wait_text("attribution-info", "Integrated gradients", changed_from=before, timeout=180_000)
    shot("saliency", "attribution")
    d.tab("Units")
    d.choose("units-layer", "conv5")
    page.locator("#units-run").click()
    d.wait_text("units-info", r"the untrained copy's picture drives", timeout=240_000)
    shot("units", "units-trained")
    d.tab("Inside AlexNet")
    d.click_picture("inside-view", 0.3, 0.3)
    d.wait_text("inside-conv", r"by hand")
    shot("inside", "inside-view")
    d.tab("Filters")
    page.locator("#presenter input").check()
    page.wait_for_function("() => document.body.classList.contains('presenter')")
    shot("presenter")
    d.check("screenshots")
    if watch.console_errors:
        raise RuntimeError(f"console errors: {watch.console_errors}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--photo", default=str(ASSETS / "cat.jpg"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, launched_app(Path(tmp), ["--weights", args.weights,
                                                                        "--device", "cpu"]) as app:
        for path in with_page(app.url, lambda d, w: take(d, w, out, Path(args.photo))):
            print(path)


if __name__ == "__main__":
    main()

"""Rows for what the Units, Inside and trust views cost: feature visualisation (per unit and per step), the
gallery index (per image) and its neighbours, one occlusion click (median and p95), and deletion/insertion
curves per method."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.rows import make_row, sig
from benchmarks.timing import measure

Log = Callable[[str], None]
STEPS = 128  # feature visualisation's default
CLICKS = 20  # occlusion clicks timed for the p95


def feature_rows(loaded: Any, analysis: Any, *, runs: int, warmup: int, log: Log) -> list[dict[str, Any]]:
    from alexnet_viz import featvis, gallery, trust
    from alexnet_viz.occlude import Patch, Patches, occlude

    rows = []
    units = iter(range(10_000))  # a new unit each run: no cache, no repeated work
    for layer in ("conv5", "fc7"):
        stat = measure(lambda layer=layer: featvis.visualize(  # type: ignore[misc]
            loaded, layer, next(units), settings=featvis.Settings(steps=STEPS), lock=None),
            runs=max(2, runs // 2), warmup=0)
        rows.append(make_row(f"featvis_{layer}", f"feature visualisation, one {layer} unit ({STEPS} steps)",
                             stat=stat, step_ms=sig(stat.median * 1000 / STEPS)))
        log(f"featvis {layer} done")
    folder = gallery.ASSETS
    images = len(gallery.find_images(folder))
    stat = measure(lambda: gallery.build_index(loaded, folder, lock=None), runs=max(2, runs // 2), warmup=0)
    rows.append(make_row("gallery_index_per_image", f"gallery index, per image ({images} bundled photos)",
                         value=stat.median * 1000 / images, images=images, index_ms=sig(stat.median * 1000)))
    index = gallery.build_index(loaded, folder, lock=None)
    rows.append(make_row("neighbours", "nearest neighbours of one image (fc7 and pixels)",
                         stat=measure(lambda: gallery.neighbours(index, loaded, analysis.input, lock=None),
                                      runs=runs, warmup=warmup)))
    log("gallery done")
    positions = iter(range(10_000))

    def click() -> None:
        i = next(positions)
        occlude(loaded, analysis, Patches().add(Patch(16 + (i * 37) % 192, 16 + (i * 53) % 192, 32)))

    stat = measure(click, runs=CLICKS, warmup=warmup)
    ms = sorted(s * 1000 for s in stat.wall)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    rows.append(make_row("occlusion_click", "occlusion by hand: one click (one forward pass)", stat=stat))
    rows.append(make_row("occlusion_click_p95", f"occlusion by hand: p95 of {CLICKS} clicks", value=p95,
                         median_ms=sig(statistics.median(ms))))
    log("occlusion click done")
    for method in ("saliency", "gradcam"):
        stat = measure(lambda method=method: trust.faithfulness(  # type: ignore[misc]
            loaded, analysis, [method], baselines=()), runs=max(2, runs // 2), warmup=0)
        rows.append(make_row(f"deletion_insertion_{method}", f"deletion + insertion curves, {method} "
                             "(its map and 2 x 29 forward passes)", stat=stat))
    log("deletion/insertion done")
    return rows

"""A lecture hall at once: slow attributions on their own replica of the model, the visitors' tensors in a
bounded cache that recomputes what it evicted, one slow job per visitor, and no event outside the queue."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from alexnet_viz import ui
from alexnet_viz.analysis import analyze, explain
from alexnet_viz.launcher import join_queue, until_completed
from alexnet_viz.ui import Handlers, ModelPool, Session, build_demo
from alexnet_viz.ui.fairness import BUSY
from alexnet_viz.ui.handlers import option_specs
from alexnet_viz.ui.layout import SLOW_GROUP
from alexnet_viz.ui.state import ResultCache

from .conftest import ASSETS, free_port, upload

DEFAULTS = {n: o.default for n, o in option_specs().items()}


def _analyze(h: Handlers, path: str, session: Session | None = None) -> dict[str, Any]:
    return h.analyze({"path": path}, "torchvision", "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6, "auto",
                     session)


def _pixels(image: Any) -> np.ndarray:
    return np.asarray(image["value"] if isinstance(image, dict) else image)


def _pictures(out: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: _pixels(v) for k, v in out.items()
            if isinstance(v, Image.Image) or (isinstance(v, dict) and isinstance(v.get("value"), Image.Image))}


# --- the slow lane's replica ------------------------------------------------------------------------------------


def test_the_slow_replica_shares_the_weights_but_not_the_lock(pool: ModelPool) -> None:
    main, slow = pool.default, pool.get(*pool.default_key, lane="slow")
    restore = pool.get(*pool.default_key, lane="restore")
    assert len({id(m.module) for m in (main, slow, restore)}) == 3
    assert len({id(m.lock) for m in (main, slow, restore)}) == 3
    assert pool.get(*pool.default_key, lane="slow") is slow  # one replica per lane, made once
    for other in (slow, restore):
        for (name, p), (_, q) in zip(main.module.named_parameters(), other.module.named_parameters(), strict=True):
            assert p is q, name  # the same tensors: no second copy of the weights
    image = Image.open(ASSETS / "cat.jpg")
    a, b = analyze(main, image), analyze(slow, image)
    assert torch.equal(a.logits, b.logits)
    assert a.activations.keys() == b.activations.keys()
    assert all(torch.equal(a.activations[k], b.activations[k]) for k in a.activations)
    ig = {"n_steps": 8, "tolerance": 0.0}
    assert torch.equal(explain(main, a, "integrated_gradients", **ig).heatmap,
                       explain(slow, a, "integrated_gradients", **ig).heatmap)


def test_a_forward_pass_proceeds_while_a_slow_attribution_runs(pool: ModelPool) -> None:
    """Occlusion on the slow replica, stopped inside its forward pass (so it holds that replica's lock):
    the main replica still analyses an image, and the attribution then finishes normally."""
    main, slow = pool.default, pool.get(*pool.default_key, lane="slow")
    inside, release = threading.Event(), threading.Event()

    def hold(_module: torch.nn.Module, _args: Any) -> None:
        inside.set()
        assert release.wait(60)

    result = analyze(main, Image.open(ASSETS / "cat.jpg"), capture=False)
    handle = slow.module.register_forward_pre_hook(hold)
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(explain(slow, result, "occlusion", stride=32)))
    try:
        worker.start()
        assert inside.wait(30) and slow.lock.locked()
        t0 = time.perf_counter()
        other = analyze(main, Image.open(ASSETS / "espresso.jpg"))  # would deadlock on a shared lock
        assert time.perf_counter() - t0 < 30 and other.activations
    finally:
        release.set()
        handle.remove()
        worker.join(60)
    assert done and done[0].method == "occlusion"


# --- the cache ------------------------------------------------------------------------------------------------


def test_the_view_gives_the_network_input_back_bit_for_bit(pool: ModelPool) -> None:
    """A session keeps the 224 px picture (150 KB), not the float input (600 KB): only because the tail of the
    preprocessing gives the very tensor back. A photo, an odd-sized noise image and a flat one."""
    rng = np.random.default_rng(0)
    images = [Image.open(ASSETS / "cat.jpg").convert("RGB"),
              Image.fromarray(rng.integers(0, 256, (301, 457, 3), dtype=np.uint8)),
              Image.new("RGB", (224, 224), (255, 0, 128))]
    for image in images:
        result = analyze(pool.default, image, capture=False)
        session = Session.start(pool, pool.default, result)
        assert session.input is None  # the view was enough
        assert torch.equal(session.network_input(), result.input)


def test_the_cache_keeps_its_byte_budget_and_the_newest_entry() -> None:
    attr = _fake_attribution()
    size = attr.heatmap.nbytes + attr.raw.nbytes
    cache = ResultCache(budget=2 * size)
    for i in range(5):
        cache.put(i, attr)
        assert cache.nbytes <= 2 * size
    assert [k in cache for k in range(5)] == [False, False, False, True, True]
    tiny = ResultCache(budget=1)
    tiny.put("a", attr)
    assert "a" in tiny and tiny.nbytes == size  # too big for the budget, but the value just made stays
    calls: list[int] = []
    assert tiny.get_or_compute("a", lambda: calls.append(1)) is attr and not calls and tiny.misses == 0


def _fake_attribution() -> Any:
    from types import MappingProxyType

    from alexnet_viz.attribution import Attribution

    return Attribution("saliency", 1, torch.zeros(8, 8), torch.zeros(3, 8, 8), False, MappingProxyType({}), 0.1)


def _no_ms(text: str) -> str:
    return re.sub(r"\d+ ms", "? ms", text)


def _visit_calls(h: Handlers) -> list[Any]:
    """What a visitor does after the image: a layer, a channel, two maps, a restyle, a comparison."""
    ig = {**DEFAULTS, "n_steps": 6, "tolerance": 0.0}
    return [
        lambda s: h.show_layer(s, "conv2", True, "inferno", 0.5),
        lambda s: h.show_channel(s, 7, 0.4),
        lambda s: h.explain(s, "integrated_gradients", "", "conv5", 0.5, "auto", ig),
        lambda s: h.explain(s, "gradcam", "", "conv3", 0.5, "auto", DEFAULTS),
        lambda s: h.restyle(s, 0.3, "auto"),
        lambda s: h.compare(s, ["saliency", "integrated_gradients", "gradcam"], "", "conv3", 0.5, ig),
    ]


def test_two_sessions_that_evict_each_other_still_get_their_own_pictures(h: Handlers, pool: ModelPool,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every picture a visitor can ask for, first with a cache that holds everything, then again for two
    visitors with a cache of 1 byte, their requests interleaved (each finds the other's tensors in the cache):
    the same pixels and the same words, each visitor their own."""
    start = {"a": _analyze(h, upload("cat.jpg"))["session"], "b": _analyze(h, upload("espresso.jpg"))["session"]}
    reference: dict[str, dict[str, Any]] = {"a": {}, "b": {}}
    for name, session in start.items():
        for call in _visit_calls(h):
            out = call(session)
            session = out["session"]
            reference[name].update(out)

    monkeypatch.setattr(pool.results, "budget", 1)
    pool.results.clear()
    misses = pool.results.misses
    sessions, outs = dict(start), {"a": {}, "b": {}}
    for call in _visit_calls(h):
        for name in ("a", "b"):
            out = call(sessions[name])
            sessions[name] = out["session"]
            outs[name].update(out)
    assert pool.results.misses >= misses + 12  # every request computed its visitor's tensors again
    for name in ("a", "b"):
        got, want = _pictures(outs[name]), _pictures(reference[name])
        assert got.keys() == want.keys() and len(got) >= 6
        for key in want:
            assert np.array_equal(got[key], want[key]), (name, key)
        for key in ("layer_info", "channel_info", "attr_info"):  # a map computed anew took its own time
            assert _no_ms(outs[name][key]) == _no_ms(reference[name][key]), (name, key)
    assert not np.array_equal(_pictures(outs["a"])["grid"], _pictures(outs["b"])["grid"])  # each their own
    monkeypatch.setattr(pool.results, "budget", 10**9)  # an evicted map comes back from its recipe, identical,
    before = sessions["a"].attributions["integrated_gradients"]  # with the time of its first computation
    pool.results.clear()
    again = sessions["a"].attributions["integrated_gradients"]
    assert again is not before and torch.equal(again.heatmap, before.heatmap) and again.seconds == before.seconds
    assert torch.equal(again.heatmap, reference["a"]["session"].attributions["integrated_gradients"].heatmap)


def test_an_evicted_slow_map_comes_back_without_waiting_for_the_slow_lane(h: Handlers, pool: ModelPool) -> None:
    """A visitor restyles their integrated gradients after the cache evicted it, while another visitor's slow
    attribution holds the slow replica: the map is computed again on the restore replica, at once."""
    session = _analyze(h, upload("cat.jpg"))["session"]
    ig = {**DEFAULTS, "n_steps": 6, "tolerance": 0.0}
    shown = h.explain(session, "integrated_gradients", "", "conv5", 0.5, "auto", ig)
    pool.results.clear()
    slow = pool.get(*pool.default_key, lane="slow")
    outs: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: outs.append(h.restyle(shown["session"], 0.5, "auto")))
    with slow.lock:  # someone's occlusion
        worker.start()
        worker.join(60)
        waited = worker.is_alive()
    worker.join(60)
    assert not waited, "the restyle waited for the slow lane"
    assert np.array_equal(_pixels(outs[0]["attr_image"]), _pixels(shown["attr_image"]))


def _first(h: Handlers, path: str, visitor: str | None = None) -> dict[str, Any]:
    return h.first_look({"path": path}, "torchvision", "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6,
                        "auto", None, visitor=visitor)


def test_the_top5_comes_first_and_the_pictures_after(h: Handlers) -> None:
    """An upload on the page is two steps: the forward pass's answer (top-5, status line, no picture), then
    every picture from that session; together they are exactly ``analyze``'s one-call result."""
    first = _first(h, upload("cat.jpg"))
    assert not any(isinstance(v, Image.Image) for v in first.values())
    assert "drawing the pictures" in first["status"] and not first["session"].recipes
    assert first["session"].scene.methods == ()  # no map is claimed before it exists
    drawn = h.panels(first["session"], "integrated_gradients")  # a slow method: saliency meanwhile, and said so
    assert drawn["session"].key == first["session"].key and drawn["method"] == "saliency"
    assert drawn["session"].scene.methods == ("saliency",) and "press **Explain**" in drawn["attr_info"]
    assert "ms in all" in drawn["status"]
    whole = _analyze(h, upload("cat.jpg"))
    assert first["top5"] == whole["top5"]
    for name, picture in _pictures(drawn).items():
        assert np.array_equal(picture, _pixels(whole[name])), name


def test_pictures_of_a_replaced_image_are_not_sent(h: Handlers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A visitor gives image B while A's pictures are still to be drawn (or being drawn): A's step sends nothing,
    so it cannot write A's session over B's; B's pictures are drawn from B. A visitor the registry does not know
    (a direct call, or one it forgot) is drawn for."""
    a = _first(h, upload("cat.jpg"), visitor="tab")
    b = _first(h, upload("espresso.jpg"), visitor="tab")
    assert h.panels(a["session"], "saliency", visitor="tab") == {}
    out = h.panels(b["session"], "saliency", visitor="tab")
    assert out["session"].key == b["session"].key and len(_pictures(out)) >= 5
    assert h.panels(a["session"], "saliency", visitor="another tab")["session"].key == a["session"].key
    from alexnet_viz import export

    drawing = export.strongest_picture

    def meanwhile(*args: Any, **kwargs: Any) -> Any:  # the visitor gives a third image while B is drawn
        _first(h, upload("cat.jpg"), visitor="tab")
        return drawing(*args, **kwargs)

    monkeypatch.setattr(export, "strongest_picture", meanwhile)
    assert h.panels(b["session"], "saliency", visitor="tab") == {}


def test_the_latest_images_registry_is_bounded() -> None:
    from alexnet_viz.ui.state import LatestImages

    latest = LatestImages(capacity=3)
    for i in range(5):
        latest.record(f"tab{i}", f"key{i}")
    assert latest.is_latest("tab4", "key4") and not latest.is_latest("tab4", "key3")
    assert latest.is_latest("tab0", "anything")  # forgotten: drawn for
    assert len(latest._keys) == 3


# --- over HTTP --------------------------------------------------------------------------------------------------


@contextmanager
def _served(pool: ModelPool, **queue: int) -> Iterator[tuple[Any, str]]:
    demo = ui.launch(build_demo(pool), port=free_port(), block=False, **queue)
    try:
        yield demo, demo.local_url.rstrip("/")
    finally:
        demo.close()


def _fn_index(demo: Any, api_name: str) -> int:
    return next(fn._id for fn in demo.fns.values() if fn.api_name == api_name)


def _file(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.jpg"}




@pytest.mark.slow
def test_one_slow_job_per_visitor_over_http(pool: ModelPool) -> None:
    """40 Explain requests from one tab while its first runs: one accepted, 39 refused at once with the
    sentence, none queued; another visitor's /predict and their own Explain are served meanwhile; once the
    first finishes the tab may start another."""
    slow = pool.get(*pool.default_key, lane="slow")
    inside, release = threading.Event(), threading.Event()

    def hold(_module: torch.nn.Module, _args: Any) -> None:
        inside.set()
        release.wait(60)

    handle = slow.module.register_forward_pre_hook(hold)
    cat = upload("cat.jpg")
    try:
        with _served(pool, queue_size=8) as (demo, url), httpx.Client(timeout=30) as http:
            explain_fn = _fn_index(demo, "explain")
            first = join_queue(http, url, explain_fn, [_file(cat), "saliency", ""], "tab-a")
            assert first.status_code == 200, first.text
            assert inside.wait(30)  # running, holding the slow replica
            answers = [join_queue(http, url, explain_fn, [_file(cat), "gradcam", ""], "tab-a") for _ in range(40)]
            assert {r.status_code for r in answers} == {400}
            assert all(r.json()["detail"] == BUSY for r in answers)
            assert len(demo._queue) == 0  # none of them took a place in the queue
            # a script without a session (POST /call/explain) is one visitor per address: one job at a time
            calls = [http.post(f"{url}/gradio_api/call/explain", json={"data": [_file(cat), "saliency", ""]})
                     for _ in range(3)]
            assert [r.status_code for r in calls] == [200, 400, 400] and calls[1].json()["detail"] == BUSY
            # another visitor: a prediction now, and a slow job of their own accepted (it waits its turn)
            client = Client(url, verbose=False)
            t0 = time.perf_counter()
            top5 = client.predict(handle_file(cat), api_name="/predict")
            assert len(top5["confidences"]) == 5 and time.perf_counter() - t0 < 30
            other = join_queue(http, url, explain_fn, [_file(cat), "saliency", ""], "tab-b")
            assert other.status_code == 200
            release.set()
            done = until_completed(http, url, "tab-a", first.json()["event_id"])
            assert done["success"], done
            # The first finished: the tab may ask again. Gradio forgets an event a moment after it has sent its
            # result (queueing.process_events' finally), so a request in that moment is still refused: retried.
            deadline = time.monotonic() + 10
            while (again := join_queue(http, url, explain_fn, [_file(cat), "saliency", ""], "tab-a")).status_code \
                    == 400 and again.json()["detail"] == BUSY and time.monotonic() < deadline:
                time.sleep(0.05)
            assert again.status_code == 200, again.text
            assert until_completed(http, url, "tab-a", again.json()["event_id"])["success"]
            assert until_completed(http, url, "tab-b", other.json()["event_id"])["success"]
    finally:
        release.set()
        handle.remove()


@pytest.mark.slow
def test_a_top5_never_waits_behind_the_rooms_pictures(pool: ModelPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two visitors' pictures are being drawn (held here) and fill the pictures' group: a third visitor's upload
    still gets its top-5 at once, over HTTP, and every picture comes once the drawing is let go."""
    from alexnet_viz import export

    drawing, inside, release = export.strongest_picture, threading.Semaphore(0), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        inside.release()
        release.wait(60)
        return drawing(*args, **kwargs)

    monkeypatch.setattr(export, "strongest_picture", held)
    args = ("torchvision", "cpu", "conv1", False, "viridis", 0.7, "saliency", 0.6, "auto")
    try:
        with _served(pool, queue_size=16) as (_demo, url):
            clients = [Client(url, verbose=False) for _ in range(3)]
            for client, name in zip(clients[:2], ("cat.jpg", "espresso.jpg"), strict=True):
                client.predict(handle_file(upload(name)), *args, api_name="/analyze")
            drawn = [client.submit("saliency", api_name="/panels") for client in clients[:2]]
            assert inside.acquire(timeout=60) and inside.acquire(timeout=60)  # both slots of the group held
            t0 = time.perf_counter()
            top5 = clients[2].predict(handle_file(upload("cat.jpg")), *args, api_name="/analyze")[0]
            assert "top5-row" in top5 and time.perf_counter() - t0 < 30
            assert not any(job.done() for job in drawn)  # the pictures are still held
            release.set()
            for job in drawn:  # every picture arrives (as a downloaded PNG file)
                values = [v.get("value") if isinstance(v, dict) else v for v in job.result(timeout=60)]  # or updates
                pictures = [v for v in values if str(v).endswith(".png")]
                assert len(pictures) >= 5 and all(Path(v).is_file() for v in pictures), pictures
    finally:
        release.set()


def _post_routes(app: Any) -> set[str]:
    """The paths of every POST route of a FastAPI app, included routers too (FastAPI keeps those as one
    ``_IncludedRouter`` entry whose ``original_router`` holds routes with their prefix)."""
    found = set()
    for route in app.routes:
        if "POST" in (getattr(route, "methods", None) or ()):
            found.add(route.path)
        included = getattr(route, "original_router", None)
        if included is not None:
            found |= _post_routes(included)
    return found


@pytest.mark.slow
def test_no_route_runs_an_event_outside_the_queue(pool: ModelPool) -> None:
    """Every event, by fn_index, through every route that runs one directly: refused; gradio_client's /predict
    (through the queue) works. The POST routes of the app are listed, so a new one in a Gradio upgrade fails
    this test until it is looked at."""
    cat = upload("cat.jpg")
    with _served(pool, queue_size=8) as (demo, url), httpx.Client(timeout=30) as http:
        posts = sorted(_post_routes(demo.app))
        direct = [p for p in posts if p.endswith(("/run/{api_name}", "/api/{api_name}"))]
        assert direct == ["/gradio_api/api/{api_name}", "/gradio_api/run/{api_name}"], posts
        queued = {"/gradio_api/queue/join", "/gradio_api/call/{api_name}", "/gradio_api/call/v2/{api_name}"}
        assert queued <= set(posts)
        unrelated = set(posts) - queued - set(direct) - {p + "/" for p in queued | set(direct)}
        # none of these runs an event: uploads, cancel/reset, streams, login, recordings, component servers
        assert all(any(w in p for w in ("upload", "cancel", "reset", "stream", "login", "recording",
                                         "component_server", "vibe", "profiling", "run-history", "heartbeat",
                                         "file"))
                   for p in unrelated), unrelated
        ran: list[str] = []
        for fn in demo.fns.values():
            for route in ("run", "api"):
                for name in ("predict", fn.api_name or "predict"):
                    r = http.post(f"{url}/gradio_api/{route}/{name}",
                                  json={"data": [_file(cat)] + [None] * (len(fn.inputs) - 1), "fn_index": fn._id,
                                        "session_hash": "direct"})
                    if r.status_code == 200:
                        ran.append(f"{route}/{name} fn {fn._id} ({fn.api_name})")
        assert not ran, ran
        top5 = Client(url, verbose=False).predict(handle_file(cat), api_name="/predict")
        assert len(top5["confidences"]) == 5


def test_every_event_is_queued_and_slow_ones_in_their_group(pool: ModelPool) -> None:
    demo = build_demo(pool)
    assert all(fn.queue for fn in demo.fns.values() if fn.fn is not None)
    slow = {fn.api_name for fn in demo.fns.values() if fn.concurrency_id == SLOW_GROUP}
    # the Saliency tab's, the Units tab's and the trust tab's slow work; nothing else
    assert slow == {"explain", "explain_event", "compare_event", "visualise", "faithfulness_event", "sanity_event",
                    "contrast_event"}

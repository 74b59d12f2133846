"""Security: no request names a server path, the file routes serve only uploads and assets, launch settings,
safe weights loading, and ruff's security rules. Uses the session `server` (`python app.py --weights none`)."""

from __future__ import annotations

import ast
import http.client
import io
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlparse

import gradio as gr
import httpx
import pytest
from PIL import Image

from alexnet_viz import cli, ui

from .conftest import ASSETS, ROOT, Server

# What each target file holds that no refusal would: found in a body, the file leaked.
TARGETS = {
    "/etc/passwd": "root:",
    str(ROOT / "alexnet_viz" / "ui" / "layout.py"): "def build_demo(",
    str(ROOT / "app.py"): "raise SystemExit(main(",
    str(ROOT / "pyproject.toml"): 'name = "alexnet-viz"',
}


def test_the_targets_hold_their_secrets() -> None:
    for path, secret in TARGETS.items():
        assert secret in Path(path).read_text(encoding="utf-8"), path


def _upload_dir(server: Server) -> Path:
    return server.log.parent / "uploads"  # the fixture's GRADIO_TEMP_DIR


def _events(server: Server, api_name: str, data: list[object]) -> tuple[int, str]:
    """POST /gradio_api/call/<api_name>, then read its event stream (bounded): (status of the POST, stream)."""
    api = server.url + "gradio_api/"
    job = httpx.post(f"{api}call/{api_name}", json={"data": data}, timeout=10)
    if job.status_code != 200:
        return job.status_code, job.text
    return 200, httpx.get(f"{api}call/{api_name}/{job.json()['event_id']}", timeout=60).text


# --- no input of the page or the API names a server path ------------------------------------------------------


def _payload_paths(server: Server) -> list[str]:
    up = _upload_dir(server)
    return [
        *TARGETS,
        f"{up}/../../../../../../../../etc/passwd",
        f"{up}/{'..%2F' * 8}etc/passwd",
        "../../../../../../../../etc/passwd",
        "app.py", "pyproject.toml", "assets/../app.py", f"{ASSETS}/../app.py", f"{ASSETS}/../alexnet_viz/ui/layout.py",
        "file:///etc/passwd", str(up), str(ASSETS), f"{server.url}gradio_api/file=/etc/passwd",
    ]


def test_api_payloads_naming_server_paths_are_refused(server: Server) -> None:
    good = {"predict": [], "explain": ["saliency", ""]}
    for path in _payload_paths(server):
        for value in ({"path": path, "meta": {"_type": "gradio.FileData"}},  # Gradio's own check
                      {"path": path},  # no FileData marker: Gradio passes it on, our check refuses it
                      {"path": None, "url": path, "meta": {"_type": "gradio.FileData"}},
                      path):
            for api_name, rest in good.items():
                status, stream = _events(server, api_name, [value, *rest])
                assert status != 200 or "event: error" in stream, (api_name, value, stream[:300])
                for secret in TARGETS.values():
                    assert secret not in stream, (api_name, value)
                assert "Traceback" not in stream and str(ROOT) not in stream
    # the second form reaches our handler, which says why in a sentence
    status, stream = _events(server, "predict", [{"path": "/etc/passwd"}])
    assert "That file is not an upload this app can read." in stream
    # and an upload the normal way still works
    from gradio_client import Client, handle_file

    out = Client(server.url, verbose=False).predict(handle_file(str(ASSETS / "cat.jpg")), api_name="/predict")
    assert len(out["confidences"]) == 5


def test_upload_path_check_resolves_links_and_dot_dots(tmp_path: Path) -> None:
    folder = Path(gr.utils.get_upload_folder()) / "security"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "innocent.png"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/passwd")
    outside = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(outside)
    for value in (str(link), {"path": str(link)}, f"{folder}/../../../../etc/passwd", f"{ASSETS}/../app.py",
                  str(ASSETS / ".." / "pyproject.toml"), str(outside), str(folder), str(ASSETS)):
        with pytest.raises(gr.Error) as caught:
            ui._upload_path(value)
        assert caught.value.message == "That file is not an upload this app can read."
    inside = folder / "photo.png"
    Image.new("RGB", (32, 32)).save(inside)
    assert ui._upload_path({"path": str(inside)}) == str(inside.resolve())
    assert ui._upload_path(str(ASSETS / "cat.jpg")) == str((ASSETS / "cat.jpg").resolve())


# --- the file routes serve only uploads and assets ------------------------------------------------------------

# Every GET route of the installed Gradio that takes a path parameter, and whether it can serve a file. A Gradio
# upgrade that adds one fails test_every_parameterised_route_is_known until it is looked at and listed here.
ROUTES = {
    "/svelte/{path:path}": True,
    "/static/{path:path}": True,
    "/assets/{path:path}": True,
    "/pwa_icon/{size}": True,
    "/monitoring/{key}": True,
    "/gradio_api/file={path_or_url:path}": True,
    "/gradio_api/file/{path:path}": True,
    "/gradio_api/proxy={url_path:path}": True,
    "/gradio_api/custom_component/{id}/{environment}/{type}/{file_name}": True,
    "/gradio_api/run-history/records/{endpoint}/{record_id}/assets/{asset_id}": True,
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist.m3u8": True,
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/{segment_id}.{ext}": True,
    "/gradio_api/stream/{session_hash}/{run}/{component_id}/playlist-file": True,
    "/gradio_api/call/{api_name}/{event_id}": True,
    "/gradio_api/call/v2/{api_name}/{event_id}": True,
    "/gradio_api/heartbeat/{session_hash}": False,  # an endless "ALIVE" stream; serves nothing else
}


def _installed_routes() -> set[str]:
    from gradio.routes import App

    with gr.Blocks() as blocks:
        gr.Textbox()
    app = App.create_app(blocks)
    found: set[str] = set()
    stack = list(app.routes)
    while stack:
        route = stack.pop()
        inner = getattr(route, "original_router", None) or getattr(route, "router", None)
        if inner is not None and not hasattr(route, "path"):
            stack.extend(inner.routes)
            continue
        if "GET" in (getattr(route, "methods", None) or set()) and "{" in route.path:
            found.add(route.path)
    return found


def test_every_parameterised_route_is_known() -> None:
    assert _installed_routes() == set(ROUTES)


def _variants(target: str, server: Server) -> list[str]:
    """Ways to write `target` into a URL: absolute, relative, encoded, traversals from allowed folders."""
    bare = target.lstrip("/")
    rel = os.path.relpath(target, ROOT)
    up = "../" * 12
    port = urlparse(server.url).port
    return [
        target, bare, "/" + target, quote(target, safe=""), quote(quote(target, safe=""), safe=""),
        up + bare, "..%2F" * 12 + quote(bare, safe=""), "%2e%2e/" * 12 + bare, "%2e%2e%2f" * 12 + bare,
        "..%5c" * 12 + bare.replace("/", "%5c"), "....//" * 12 + bare, "%252e%252e%252f" * 12 + bare,
        "..;/" * 12 + bare, rel, "./" + rel, "assets/../" + rel, f"{ASSETS}/../{rel}", f"{ASSETS}/%2e%2e/{rel}",
        f"{ASSETS}/{up}{bare}", f"{_upload_dir(server)}/{up}{bare}", f"{_upload_dir(server)}/..%2F..%2F{rel}",
        "file://" + target, f"http://127.0.0.1:{port}/gradio_api/file={target}",
        f"http://localhost:{port}/gradio_api/file={quote(target)}",
    ]


def _fill(template: str, payload: str) -> list[str]:
    """One URL per parameter of `template`: that parameter set to `payload`, the others to harmless words."""
    import re

    params = re.findall(r"\{[^}]+\}", template)
    urls = []
    for chosen in params:
        url = template
        for p in params:
            url = url.replace(p, payload if p == chosen else ("client" if "environment" in p else "x"), 1)
        urls.append(url)
    return urls


def _get(conn_args: tuple[str, int], raw_path: str) -> tuple[int, bytes]:
    """A GET with the path sent byte for byte (no client-side normalisation of dots or escapes)."""
    conn = http.client.HTTPConnection(*conn_args, timeout=5)
    try:
        conn.request("GET", raw_path)
        response = conn.getresponse()
        return response.status, response.read(2_000_000)
    except (TimeoutError, http.client.HTTPException, OSError):
        return -1, b""
    finally:
        conn.close()


def test_file_routes_serve_no_server_file(server: Server) -> None:
    host = urlparse(server.url)
    conn_args = (host.hostname or "127.0.0.1", host.port or 80)
    # the routes do serve what they should, so the refusals below mean something
    status, body = _get(conn_args, f"/gradio_api/file={ASSETS / 'cat.jpg'}")
    assert status == 200 and body == (ASSETS / "cat.jpg").read_bytes()
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(png, "PNG")
    [uploaded] = httpx.post(server.url + "gradio_api/upload", files={"files": ("x.png", png.getvalue())},
                            timeout=10).json()
    status, body = _get(conn_args, f"/gradio_api/file={uploaded}")
    assert status == 200 and body == png.getvalue()

    statuses: Counter[int] = Counter()
    for template, serves in ROUTES.items():
        if not serves:
            continue
        for target, secret in TARGETS.items():
            for payload in _variants(target, server):
                for url in _fill(template, payload):
                    status, body = _get(conn_args, url)
                    statuses[status] += 1
                    assert not (status == 200 and secret.encode() in body), f"GET {url} served {target}"
    assert sum(statuses.values()) > 1000
    assert statuses[-1] < 0.02 * sum(statuses.values()), statuses  # the server answered (no hang, no reset)


def test_upload_over_the_limit_gets_413(server: Server) -> None:
    limit = 20 * 1024 * 1024  # ui.MAX_FILE_SIZE, "20mb" as Gradio counts it
    assert ui.MAX_FILE_SIZE == "20mb"
    big = b"\x00" * (limit + 1024)
    response = httpx.post(server.url + "gradio_api/upload", files={"files": ("big.png", big)}, timeout=60)
    assert response.status_code == 413
    small = httpx.post(server.url + "gradio_api/upload", files={"files": ("small.png", b"\x00" * 1024)}, timeout=10)
    assert small.status_code == 200


def test_monitoring_and_run_history_are_off(server: Server) -> None:
    for path, refused in (("monitoring", (401, 403, 404)), ("monitoring/summary", (401, 403, 404)),
                          ("gradio_api/runs", (404,))):
        assert httpx.get(server.url + path, timeout=10).status_code in refused, path
    log = server.log.read_text(encoding="utf-8", errors="replace")
    assert "gradio.live" not in log and "public URL" not in log


# --- launch settings ------------------------------------------------------------------------------------------


def test_launch_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_launch(self: gr.Blocks, **kwargs: object) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.setenv("GRADIO_SHARE", "True")  # an explicit share=False wins over the environment
    ui.serve(weights="none", device="cpu", block=False)
    assert seen["share"] is False
    assert seen["max_file_size"] == ui.MAX_FILE_SIZE
    assert seen["enable_monitoring"] is False and seen["show_error"] is False and seen["run_history"] is False
    assert seen["allowed_paths"] == [str(ASSETS)]  # nothing else of the server's disk
    assert seen["server_name"] == "127.0.0.1"
    args = cli.build_parser().parse_args(["serve"])
    assert args.share is False and args.host in ("127.0.0.1", os.environ.get("GRADIO_SERVER_NAME"))
    assert args.weights == "imagenet"  # the weights come from the command line only (see below)


def test_no_event_takes_a_weights_path_or_a_file_name(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ui.ModelPool("torchvision", "none", "cpu")
    demo = ui.build_demo(pool)
    free_text = []
    for dep in demo.fns.values():
        for block in dep.inputs:
            label = (getattr(block, "label", None) or "").lower()
            assert "weight" not in label and "path" not in label and "file" not in label, (dep.name, label)
            if isinstance(block, gr.Textbox):
                free_text.append(dep.name)
    assert set(free_text) == {"explain_api"}  # its method name and class: both checked against fixed lists
    # a switch of architecture or device loads only seeded weights (or the start's); never a name from a visitor
    loads: list[tuple[object, ...]] = []
    default = pool.default
    monkeypatch.setattr(ui.state, "load_model", lambda *a, **k: loads.append(a) or default)
    ui.Handlers(pool).switch_model("paper", "cpu", None)
    assert loads == [("paper", "none", "cpu")]  # the start asked for none: none for any architecture, never a file
    imagenet_pool = ui.ModelPool("torchvision", "imagenet", "cpu")  # offline here: seeded, with the banner
    loads.clear()
    ui.Handlers(imagenet_pool).switch_model("paper", "cpu", None)
    assert loads == [("paper", "imagenet", "cpu")]  # ImageNet's where they exist (not for paper): never a file


# --- code ---------------------------------------------------------------------------------------------------


def _calls(tree: ast.AST, module: str, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == name and isinstance(node.func.value, ast.Name) and node.func.value.id == module]


def test_torch_load_only_with_weights_only_true() -> None:
    found = 0
    for path in sorted((ROOT / "alexnet_viz").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree, "torch", "load"):
            found += 1
            keywords = {k.arg: k.value for k in call.keywords}
            value = keywords.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, f"{path.name}:{call.lineno}"
        for fn in ("load", "loads", "Unpickler"):
            assert not _calls(tree, "pickle", fn), f"{path.name} unpickles"
        for node in ast.walk(tree):  # no `from torch import load` to dodge the check
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "pickle"):
                assert all(a.name not in ("load", "loads") for a in node.names), path.name
    assert found >= 1


def test_ruff_security_rules_pass() -> None:
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed")
    run = subprocess.run([ruff, "check", "--select", "S", "--no-cache", "alexnet_viz"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr

"""One file per upload request: the middleware on its own (any chunking of the body) and over raw HTTP against
the launched app, where Gradio alone would store every file of the request."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from python_multipart.multipart import MultipartParser

from alexnet_viz.serving_limits import ONE_FILE, OneFilePerUpload, upload_limit_kwargs

from .conftest import free_port

BOUNDARY = "----alexnetvizboundary7MA4YWxk"


def _multipart(files: list[tuple[str, bytes]], *, preamble: bytes = b"") -> bytes:
    body = io.BytesIO()
    body.write(preamble)
    for name, data in files:
        body.write(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{BOUNDARY}--\r\n".encode())
    return body.getvalue()


def _parts(body: bytes) -> list[bytes]:
    """The parts' data, as python-multipart (what Gradio parses with) reads them."""
    parts: list[bytes] = []

    def begin() -> None:
        parts.append(b"")

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1] += chunk[start:end]

    parser = MultipartParser(BOUNDARY, {"on_part_begin": begin, "on_part_data": data})
    parser.write(body)
    parser.finalize()
    return parts


def _through_middleware(body: bytes, chunk: int) -> tuple[int, bytes, bytes]:
    """Send `body` in chunks of `chunk` bytes through OneFilePerUpload to an app that reads it all and answers
    200; return the status, the response body, and the body the app saw."""
    seen = bytearray()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            seen.extend(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"stored"})

    chunks = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if chunks:
            piece = chunks.pop(0)
            return {"type": "http.request", "body": piece, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload",
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]}
    asyncio.run(OneFilePerUpload(app)(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), bytes(seen)


ONE = [("a.png", os.urandom(3000))]
TWO = [("a.png", os.urandom(3000)), ("b.png", os.urandom(2000))]


@pytest.mark.parametrize("chunk", [1, 2, 7, 37, 64, 1000, 1 << 20])
def test_one_file_passes_unchanged_in_any_chunking(chunk: int) -> None:
    body = _multipart(ONE, preamble=b"preamble\r\n")
    status, answer, seen = _through_middleware(body, chunk)
    assert (status, answer, seen) == (200, b"stored", body)


@pytest.mark.parametrize("chunk", [1, 2, 7, 37, 64, 1000, 1 << 20])
def test_a_second_file_is_refused_and_never_reaches_the_app(chunk: int) -> None:
    body = _multipart([*TWO, ("c.png", b"x" * 50)])
    status, answer, seen = _through_middleware(body, chunk)
    assert status == 413 and answer == ONE_FILE.encode()
    assert _parts(seen) == [TWO[0][1]]  # the app saw a well-formed body holding the first file only
    assert TWO[1][1] not in seen


def test_other_requests_pass_untouched() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])

    seen: list[str] = []
    for scope in ({"type": "http", "method": "GET", "path": "/gradio_api/upload", "headers": []},
                  {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "headers": []},
                  {"type": "websocket", "path": "/x", "headers": []}):
        asyncio.run(OneFilePerUpload(app)(scope, None, None))  # type: ignore[arg-type]
    assert len(seen) == 3


def test_kwargs_for_launch_keep_the_callers() -> None:
    given = {"docs_url": None, "middleware": ["theirs"]}
    kwargs = upload_limit_kwargs(given)
    assert kwargs["docs_url"] is None and kwargs["middleware"][0] == "theirs"
    assert kwargs["middleware"][1].cls is OneFilePerUpload and given["middleware"] == ["theirs"]


def _post(port: int, body: bytes, *, chunked: bool = False) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    try:
        if chunked:
            connection.request("POST", "/gradio_api/upload", body=iter([body[i:i + 4096]
                                                                       for i in range(0, len(body), 4096)]),
                               headers=headers, encode_chunked=True)
        else:
            connection.request("POST", "/gradio_api/upload", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (BrokenPipeError, ConnectionResetError):  # answered before the whole body was sent
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.slow
def test_the_launched_app_takes_one_file_per_upload_request(pool: Any) -> None:
    import gradio as gr

    from alexnet_viz import ui

    uploads = Path(gr.utils.get_upload_folder())
    demo = ui.launch(ui.build_demo(pool), port=free_port(), block=False, queue_size=8)
    try:
        port = demo.server_port
        before = {p for p in uploads.rglob("*") if p.is_file()}
        # ui.launch installs the limit (Gradio alone stores up to 1000 files of one request)
        assert _post(port, _multipart(TWO)) == (413, ONE_FILE.encode())
        status, answer = _post(port, _multipart(ONE))
        assert status == 200, answer
        [stored] = json.loads(answer)
        assert Path(stored).read_bytes() == ONE[0][1]
        many = [(f"{i}.png", os.urandom(200_000)) for i in range(20)]
        for chunked in (False, True):
            status, answer = _post(port, _multipart(many), chunked=chunked)
            assert (status, answer) == (413, ONE_FILE.encode())
        made = [p.read_bytes() for p in uploads.rglob("*") if p.is_file() and p not in before]
        assert not any(data in made for _, data in many[1:])  # nothing after the first file reached the disk
    finally:
        demo.close()

"""Limits on what one HTTP request may bring that Gradio has no setting for: one file per upload request.

Gradio's ``POST /gradio_api/upload`` takes up to 1000 files per request, each up to ``max_file_size``, and
writes them all to disk before anything of ours runs: one request of 50 files of 19 MB is a gigabyte. The app
takes one picture at a time, and Gradio's own page and clients send one file per request for a single-image
component. `OneFilePerUpload` watches the multipart body as it streams in and, when a second part begins, ends
the body there for Gradio (which then stores only the first file) and answers 413 instead of Gradio's answer.

Install it before the server starts with ``launch(app_kwargs=upload_limit_kwargs())``, or on a running app with
`install_upload_limit(app)`.
"""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ONE_FILE", "OneFilePerUpload", "install_upload_limit", "upload_limit_kwargs"]

ONE_FILE = "Send one file per upload request."
_UPLOAD_PATHS = ("/gradio_api/upload", "/upload")  # Gradio 6, and the route its older clients use


def _boundary(scope: Scope) -> bytes | None:
    """The multipart boundary of the request's Content-Type, or None if it is not multipart/form-data."""
    from python_multipart.multipart import parse_options_header

    for name, value in scope.get("headers", []):
        if name.lower() == b"content-type":
            kind, options = parse_options_header(value)
            if kind == b"multipart/form-data" and options.get(b"boundary"):
                return bytes(options[b"boundary"])
            return None
    return None


class OneFilePerUpload:
    """ASGI middleware: a multipart upload request with more than one part is answered 413 (``ONE_FILE``).

    Nothing is buffered beyond a boundary's length: the body passes through as it arrives. Parts are counted
    by their delimiters (``--BOUNDARY`` not followed by ``--``); when the second one arrives, the body Gradio
    sees ends with the closing delimiter right before it, the rest of the request is not read, and Gradio's
    answer is replaced by the 413.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope["path"].endswith(_UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        boundary = _boundary(scope)
        if boundary is None:  # not multipart: Gradio answers 400 itself
            await self.app(scope, receive, send)
            return
        delimiter = b"--" + boundary
        keep = len(delimiter) + 4  # held back: a delimiter split across chunks, its CRLF before, 2 bytes after
        pending, parts, cut, done = b"", 0, False, False

        async def limited_receive() -> Message:
            nonlocal pending, parts, cut, done
            if done:
                return {"type": "http.disconnect"}
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                pending += message.get("body", b"")
                more = bool(message.get("more_body", False))
                start = 0
                while (at := pending.find(delimiter, start)) >= 0:
                    after = pending[at + len(delimiter):at + len(delimiter) + 2]
                    if len(after) < 2 and more:  # cannot tell a part's start from the end yet
                        break
                    start = at + len(delimiter)
                    if after == b"--":  # the closing delimiter
                        continue
                    parts += 1
                    if parts > 1:  # a second part begins: end the body before it
                        end = at - 2 if pending[at - 2:at] == b"\r\n" else at
                        cut = done = True
                        return {"type": "http.request", "body": pending[:end] + b"\r\n" + delimiter + b"--\r\n",
                                "more_body": False}
                if not more:
                    done = True
                    return {"type": "http.request", "body": pending, "more_body": False}
                # pass on all but the tail that may hold the start of a delimiter (and never a found one)
                hold = min(len(pending) - keep, at - 2 if at >= 0 else len(pending))
                hold = max(hold, start)  # delimiters already counted go on: never counted twice
                body, pending = pending[:hold], pending[hold:]
                if body:
                    return {"type": "http.request", "body": body, "more_body": True}

        started = False

        async def limited_send(message: Message) -> None:
            nonlocal started
            if cut:
                return  # Gradio's answer for the truncated body: replaced below
            started = True
            await send(message)

        await self.app(scope, limited_receive, limited_send)
        if cut and not started:
            body = ONE_FILE.encode()
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})


def upload_limit_kwargs(app_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """``app_kwargs`` for ``Blocks.launch`` (a copy) with `OneFilePerUpload` added to the app's middleware."""
    kwargs = dict(app_kwargs or {})
    kwargs["middleware"] = [*kwargs.get("middleware", []), Middleware(OneFilePerUpload)]
    return kwargs


def install_upload_limit(app: Any) -> None:
    """Put `OneFilePerUpload` in front of a Starlette/FastAPI app (``demo.app``), started or not."""
    if getattr(app, "middleware_stack", None) is None:  # not started: the ordinary way
        app.add_middleware(OneFilePerUpload)
    else:  # already serving: Starlette allows no new middleware, so wrap the stack it built
        app.middleware_stack = OneFilePerUpload(app.middleware_stack)

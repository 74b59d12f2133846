"""One slow job per visitor: a second slow request from the same session is refused before it enters the queue.

Gradio limits the queue's length and each group's concurrency, but not what one visitor holds: 40 Explain
clicks from one tab would fill the queue for everyone. The check sits in the queue's ``push`` (every route
that queues an event goes through it: ``/queue/join``, ``/call/<name>``, ``/call/v2/<name>``), so a refused
request never takes a place in the queue; it is answered at once with HTTP 400 and our sentence, which the
page shows as an error toast and gradio_client raises.

Refusing rather than replacing: Gradio cannot stop a running handler's thread (a replaced job would go on
computing until its next batch), and a visitor who pressed Explain twice expects the first result, not a
silent swap. A visitor is a ``session_hash`` (one browser tab, one gradio_client): a lecture hall behind one
NAT address is hundreds of visitors, so a per-address limit would refuse the students, not the abuser. Only a
request that names no session (``POST /gradio_api/call/<name>`` from a script) is counted by its address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Any

__all__ = ["BUSY", "one_slow_job_per_visitor", "slow_jobs_of"]

BUSY = "Your previous attribution is still running; wait for it to finish, then try again."


def _address(request: Any) -> str:
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for", "")  # a Space's proxy puts the visitor's address first
    client = getattr(request, "client", None)
    return "address:" + (forwarded.split(",")[0].strip() or (client.host if client else "?"))


def _visitor_of(event: Any) -> str:
    """An event's visitor: its session, or, for one pushed without a session (Gradio then names the session
    after the event), its address."""
    return _address(event.request) if event.session_hash == event._id else event.session_hash


def slow_jobs_of(queue: Any, visitor: str, groups: Collection[str]) -> int:
    """Events of ``visitor`` in ``groups`` that the queue holds now, waiting or running. Gradio keeps an
    event in ``event_ids_to_events`` from its push until it finishes, is cancelled or its client leaves."""
    return sum(1 for event in list(queue.event_ids_to_events.values())
               if event.concurrency_id in groups and _visitor_of(event) == visitor)


def one_slow_job_per_visitor(queue: Any, groups: Collection[str], *, message: str = BUSY) -> None:
    """Wrap ``queue.push`` (a ``gradio.queueing.Queue``) so that a session holds at most one event of the
    concurrency ``groups`` at a time; a second is refused with ``message`` before it is queued."""
    push: Callable[..., Awaitable[tuple[bool, Any, str]]] = queue.push
    if getattr(push, "one_slow_job_per_visitor", False):
        return
    guard = asyncio.Lock()  # the check and the push that records the event, as one step

    async def fair_push(body: Any, request: Any, username: str | None) -> tuple[bool, Any, str]:
        from gradio import route_utils

        try:
            fn = route_utils.get_fn(queue.blocks, None, body)
        except Exception:  # an unknown fn_index: Gradio's own push gives its own answer
            return await push(body, request, username)
        if getattr(fn, "concurrency_id", None) not in groups:
            return await push(body, request, username)
        async with guard:
            visitor = body.session_hash if body.session_hash is not None else _address(request)
            if slow_jobs_of(queue, visitor, groups):
                return False, message, "error"
            return await push(body, request, username)

    fair_push.one_slow_job_per_visitor = True  # type: ignore[attr-defined]
    queue.push = fair_push

"""What an attribution explains: one class's score, or the difference of two ("why A and not B").

``Contrast(a, b)`` asks which pixels make class ``a`` score higher than class ``b``: the maps of gradient
methods are then maps of ``score[a] - score[b]``, and swapping the classes negates them. ``b=None`` means the
runner-up: the highest-scoring class other than ``a``. Classes are indices here; names are turned into
indices by :meth:`alexnet_viz.model.LoadedModel.class_index`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

__all__ = ["Contrast", "TargetError", "parse_class_index", "shorten"]

_SHOWN = 40  # characters of a person's text echoed back in a message


class TargetError(UserError):
    """A target that names no class of this model; the message says what was wrong."""


@dataclass(frozen=True)
class Contrast:
    """Explain ``score[a] - score[b]``; ``b=None`` is the runner-up (the best class other than ``a``)."""

    a: int | str
    b: int | str | None = None


def shorten(text: str, limit: int = _SHOWN) -> str:
    """``repr`` of at most ``limit`` characters of ``text``, marked when cut: safe to echo in a message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text):,} characters)"


def parse_class_index(text: str, num_classes: int) -> int | None:
    """The index written in ``text`` (ASCII digits only, e.g. ``"281"``), or None when it is not a number.

    Superscripts and other Unicode digits (``"²"``, ``"①"``, ``"٣"``) are not numbers here, and an index
    too long to be a class is refused before ``int()`` sees it.
    """
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text) > len(str(num_classes)) + 2:  # leading zeros aside, no class index is this long
        raise TargetError(f"Class index {shorten(text)} is out of range; this model has {num_classes} classes.")
    index = int(text)
    if index >= num_classes:
        raise TargetError(f"Class index {index} is out of range; this model has {num_classes} classes.")
    return index

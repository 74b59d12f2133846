"""The errors a person is meant to read, and the one test for "the machine ran out of memory".

Every failure that is the visitor's or the user's to fix (an image, a weights file, a device, an option,
training data) is a :class:`UserError` whose ``str()`` is one plain sentence. The page shows that sentence
as it is; any other exception is a bug of ours: the app logs its traceback and shows a short generic
sentence, so a rendering bug is never presented as the visitor's fault.
"""

from __future__ import annotations

__all__ = ["UserError", "is_out_of_memory"]


class UserError(ValueError):
    """A failure to show a person as one plain sentence (``str(error)``), ending with a full stop."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: ``MemoryError``, CUDA's ``OutOfMemoryError``, the CPU
    allocator's "not enough memory" or MPS's plain ``RuntimeError("... out of memory")``."""
    if isinstance(error, MemoryError):
        return True
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "not enough memory" in text)

"""On PYTHONPATH, makes ``import triton`` fail as on a CPU-only torch wheel (the memory lever's variant).

torchvision's import pulls in ``torch._dynamo``, which maps the 70 MB ``libtriton`` that only CUDA wheels
of torch bring; Python imports this file at start-up (``site``) when its folder is on ``PYTHONPATH``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType


class _NoTriton(MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoTriton())

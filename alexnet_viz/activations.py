"""Capture the outputs of named layers during a forward pass, with hooks that never outlive the block."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture"]


@contextmanager
def capture(model: nn.Module, layers: Iterable[str], *, to_cpu: bool = True) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that fills with ``layer name -> output`` as ``model`` runs inside the block.

    Outputs are copied (detached, and moved to the CPU unless ``to_cpu=False``), so a later in-place
    op cannot change what was captured. The hooks are removed on leaving the block, also on an
    exception.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            out = output.detach()
            captured[name] = out.to("cpu", copy=True) if to_cpu else out.clone()

        return hook

    try:
        for name in layers:
            handles.append(model.get_submodule(name).register_forward_hook(hook_for(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()

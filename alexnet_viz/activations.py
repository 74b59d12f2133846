"""Capture the outputs of named layers during a forward pass, with hooks that never outlive the block, and the
lock that whoever hooks or runs a shared model holds.

Hooks (ours and Captum's: guided backprop, deconvolution, DeepLift and Grad-CAM put them on the model's
modules) are seen by every forward pass that runs meanwhile: a second request would get a wrong map, or a
forward under ``torch.inference_mode`` would fail to register a tensor hook. So everything that runs a model
shared between requests holds :func:`model_lock` of that model: two models (two architectures or devices in
the app's pool) never wait for each other.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture", "model_lock"]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    """The one lock of ``model``: the same object on every call, made on the first, gone with the model.

    Kept beside the module rather than on it, so the module stays copyable and picklable.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


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

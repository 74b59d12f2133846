"""What the app keeps: the shared models (read-only, one per architecture and device) and each visitor's
results (a :class:`Session` in ``gr.State``, never a global)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from ..analysis import Analysis
from ..attribution import Attribution
from ..export import Scene
from ..model import LoadedModel, load_model

__all__ = ["ModelPool", "Session"]


class ModelPool:
    """Loaded models, one per (arch, device), loaded on first use and shared read-only by all visitors.

    The architecture given at start gets the weights given at start; the others are seeded and untrained
    (the banner says so). At most ``max_models`` stay in memory (about 250 MB each).
    """

    def __init__(self, arch: str | None = None, weights: str = "imagenet", device: str = "auto", *,
                 num_classes: int | None = None, labels: str | None = None, max_models: int = 3) -> None:
        self._weights, self._num_classes, self._labels = weights, num_classes, labels
        self._max = max_models
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        first = load_model(arch, weights, device, num_classes=num_classes, labels=labels, fallback=True)
        self.default_key = (first.arch, str(first.device))
        self._models[self.default_key] = first

    @property
    def default(self) -> LoadedModel:
        return self.get(*self.default_key)

    def get(self, arch: str, device: str) -> LoadedModel:
        key = (arch, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            if arch == self.default_key[0]:
                loaded = load_model(arch, self._weights, device, num_classes=self._num_classes, labels=self._labels,
                                    fallback=True)
            else:  # no weights were given for it: ImageNet's where they exist, else untrained (the banner says)
                loaded = load_model(arch, "imagenet", device, fallback=True)
            self._models[key] = loaded
            while len(self._models) > self._max:
                oldest = next(k for k in self._models if k != self.default_key)
                del self._models[oldest]
            return loaded


@dataclass(frozen=True)
class Session:
    """One visitor's results: the analysis of their image, the attributions computed for it, and the
    :class:`~alexnet_viz.export.Scene` that says what each panel on their screen shows (the Download
    button writes exactly that). Immutable: every handler returns a new one."""

    arch: str
    device: str
    analysis: Analysis
    attributions: Mapping[str, Attribution] = field(default_factory=lambda: MappingProxyType({}))
    scene: Scene = field(default_factory=Scene)

    def with_attribution(self, attr: Attribution) -> Session:
        return replace(self, attributions=MappingProxyType({**self.attributions, attr.method: attr}))

    def with_scene(self, **changes: Any) -> Session:
        return replace(self, scene=replace(self.scene, **changes))

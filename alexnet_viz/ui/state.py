"""What the app keeps: the shared models (read-only, one per architecture and device, with a second replica for
the slow attributions), each visitor's :class:`Session` in ``gr.State``, and one process-wide
:class:`ResultCache` that holds the heavy tensors of every session within a byte budget.

A session itself is light (the 224 px picture the network saw, the settings of each attribution and what
each panel shows: about 150 KB). Its analysis (every layer's activations, ~4.9 MB for AlexNet) and its
attribution maps live in the cache; when the budget evicts them, the next panel that needs them computes them
again from the session: one forward pass for the analysis, the same Captum call for a map. The pictures are
the same pixel for pixel (a test checks), so the visitor does not notice; memory stays bounded however many
visitors come.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
from PIL import Image

from ..analysis import Analysis, analyze
from ..architectures import ARCHITECTURES
from ..attribution import METHODS, Attribution, Contrast, attribute
from ..errors import UserError
from ..export import Scene
from ..model import LoadedModel, load_model
from ..weights import Untrained, parse_source
from .server import RESULTS_BUDGET, STATE_CAPACITY

__all__ = ["TRAINED_PREFIX", "Lane", "LatestImages", "ModelPool", "Recipe", "ResultCache", "Session", "replica"]

Lane = Literal["main", "slow", "restore"]
LANES: tuple[Lane, ...] = ("main", "slow", "restore")
TRAINED_PREFIX = "trained:"  # the pool's name for a model trained on this server (the Train tab): "trained:<run>"


def replica(loaded: LoadedModel) -> LoadedModel:
    """The same model with new module objects that share every parameter and buffer tensor with ``loaded``.

    New modules mean a lock of their own (:func:`~alexnet_viz.activations.model_lock` is per module) and hooks
    of their own (Captum's and ours are put on modules), so work on the replica never waits for, nor sees, work
    on the original; shared tensors mean no second copy of the weights (parameters are frozen: nobody writes
    them). Made before anyone hooks ``loaded``: a deepcopy would copy hooks present at that moment.
    """
    module = loaded.module
    shared: dict[int, Any] = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return replace(loaded, module=copy.deepcopy(module, memo=shared))


class ModelPool:
    """Loaded models, one per (arch, device), loaded on first use and shared read-only by all visitors.

    Each model comes in replicas (lanes) that share their weights, each with its own lock: ``"main"`` for
    analyses and quick maps, ``"slow"`` for the slow attributions (so a minute of occlusion never makes anyone's
    forward pass wait), ``"restore"`` for computing again a slow map the cache evicted (so a visitor's restyle
    never waits behind another visitor's occlusion, nor holds up anyone's forward pass).
    The architecture given at start gets the weights given at start; the others get ImageNet's where they
    exist, else are seeded and untrained (the banner says so), and are untrained in any case when the start
    asked for no weights (``--weights none``: nothing is downloaded). At most ``max_models`` stay in memory
    (about 250 MB each, both lanes together).
    ``results`` is the process-wide cache of the visitors' tensors.

    A model trained on this server (the Train tab) is added with :meth:`add_trained` under the name
    ``"trained:<run>"`` in place of an architecture; it is loaded again from its run folder when the pool
    evicted it, like any other. At most ``max_trained`` such names are kept: the oldest is forgotten first.
    """

    def __init__(self, arch: str | None = None, weights: str = "imagenet", device: str = "auto", *,
                 num_classes: int | None = None, labels: str | None = None, max_models: int = 3,
                 results_budget: int = RESULTS_BUDGET, max_trained: int = 3) -> None:
        self._weights, self._num_classes, self._labels = weights, num_classes, labels
        self._others = "none" if isinstance(parse_source(weights), Untrained) else "imagenet"  # other archs' weights
        self._max = max_models
        self._max_trained = max_trained
        self._trained: OrderedDict[str, Path] = OrderedDict()  # "trained:<run>" -> its model.safetensors
        self._models: OrderedDict[tuple[str, str], dict[Lane, LoadedModel]] = OrderedDict()  # the lanes of a model
        self._lock = threading.Lock()
        self.results = ResultCache(results_budget)
        first = load_model(arch, weights, device, num_classes=num_classes, labels=labels, fallback=True)
        self.default_key = (first.arch, str(first.device))
        self._models[self.default_key] = _lanes(first)

    @property
    def default(self) -> LoadedModel:
        return self.get(*self.default_key)

    @property
    def trained(self) -> list[str]:
        """The names of the models trained here that are kept, oldest first."""
        with self._lock:
            return list(self._trained)

    def names(self) -> list[str]:
        """Every name :meth:`get` takes: the architectures, then the models trained here."""
        return [*ARCHITECTURES, *self.trained]

    def add_trained(self, run: str, weights: str | Path, device: str) -> tuple[str, list[Path]]:
        """Load the checkpoint ``weights`` (``model.safetensors`` beside its ``model.json``) as
        ``"trained:<run>"`` on ``device``; returns that name and the weights files of the trained models now
        forgotten to keep at most ``max_trained`` (their run folders may go)."""
        name = f"{TRAINED_PREFIX}{run}"
        path = Path(weights)
        loaded = load_model(None, path, device)  # the card gives the architecture, classes and normalisation
        forgotten: list[Path] = []
        with self._lock:
            self._trained[name] = path
            self._trained.move_to_end(name)
            while len(self._trained) > self._max_trained:
                old, old_path = self._trained.popitem(last=False)
                forgotten.append(old_path)
                for key in [k for k in self._models if k[0] == old]:
                    del self._models[key]
            self._put((name, str(loaded.device)), _lanes(loaded))
        return name, forgotten

    def name_of(self, loaded: LoadedModel) -> str:
        """The name ``loaded`` (one of this pool's models, any lane) is kept under: its architecture, or
        ``"trained:<run>"``."""
        with self._lock:
            for (name, _), lanes in self._models.items():
                if any(m is loaded for m in lanes.values()):
                    return name
        return loaded.arch

    def _put(self, key: tuple[str, str], lanes: dict[Lane, LoadedModel]) -> None:
        """Keep ``lanes`` under ``key`` and evict the least recently used beyond ``max_models`` (lock held)."""
        self._models[key] = lanes
        self._models.move_to_end(key)
        while len(self._models) > self._max:
            oldest = next(k for k in self._models if k != self.default_key)
            del self._models[oldest]

    def get(self, arch: str, device: str, lane: Lane = "main") -> LoadedModel:
        key = (arch, device)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key][lane]
            if arch.startswith(TRAINED_PREFIX):
                if arch not in self._trained:
                    raise UserError(f"The model {arch[len(TRAINED_PREFIX):]!r} trained here is no longer kept "
                                    "(only the last few are); train it again or choose another architecture.")
                loaded = load_model(None, self._trained[arch], device)
            elif arch == self.default_key[0]:
                loaded = load_model(arch, self._weights, device, num_classes=self._num_classes, labels=self._labels,
                                    fallback=True)
            else:  # no weights were given for it: see the class's docstring (the banner says which)
                loaded = load_model(arch, self._others, device, fallback=True)
            self._put(key, _lanes(loaded))
            return self._models[key][lane]


def _lanes(loaded: LoadedModel) -> dict[Lane, LoadedModel]:
    """All the replicas at once, as the model is loaded: before any request can have hooked it."""
    return {lane: loaded if lane == "main" else replica(loaded) for lane in LANES}


# -------------------------------------------------------------------------------------------------------
# the cache of heavy tensors


def _nbytes(value: Analysis | Attribution) -> int:
    if isinstance(value, Attribution):
        return value.heatmap.nbytes + value.raw.nbytes
    tensors = [value.input, value.logits, value.probabilities, *value.activations.values()]
    return sum(t.nbytes for t in tensors) + value.view.width * value.view.height * len(value.view.getbands())


class ResultCache:
    """Analyses and attribution maps by key, least recently used first out once their bytes pass ``budget``.

    Thread-safe. Computing a missing value happens outside the cache's lock (a forward pass or a Captum call
    must not make other visitors' look-ups wait); two requests missing the same key at once both compute it,
    which gives the same tensors.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.misses = 0  # values computed again after an eviction: for tests and the load benchmark

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def put(self, key: Hashable, value: Analysis | Attribution) -> None:
        size = _nbytes(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.budget and len(self._items) > 1:  # the newest stays even if over budget
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit[0]
            self.misses += 1
        value = compute()
        self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# -------------------------------------------------------------------------------------------------------
# one visitor


_TENSOR_FIELDS = {"heatmap", "raw"}


@dataclass(frozen=True)
class Recipe:
    """An attribution without its tensors: how to compute it again (method, target, contrast, layer, options)
    and what was reported the first time (seconds, steps, completeness gap), so a recomputed map shows the
    same caption as the one it replaces."""

    method: str
    target: int
    signed: bool
    options: tuple[tuple[str, float | int], ...]
    seconds: float
    convergence_delta: float | None = None
    layer: str | None = None
    contrast: int | None = None
    steps: int | None = None

    @classmethod
    def of(cls, attr: Attribution) -> Recipe:
        meta = {f.name: getattr(attr, f.name) for f in fields(attr) if f.name not in _TENSOR_FIELDS}
        return cls(**{**meta, "options": tuple(sorted(attr.options.items()))})

    def compute(self, loaded: LoadedModel, x: torch.Tensor) -> Attribution:
        target: int | Contrast = self.target if self.contrast is None else Contrast(self.target, self.contrast)
        options: dict[str, Any] = dict(self.options)
        fresh = attribute(loaded.module, x.to(loaded.device), self.method, target=target, layer=self.layer, **options)
        return replace(fresh, seconds=self.seconds)  # the caption keeps the time the visitor waited


def _pixels_to_input(loaded: LoadedModel) -> Callable[[Image.Image], torch.Tensor]:
    """The tail of the model's preprocessing: a (S, S) RGB picture -> (3, S, S) normalised, the same operations
    torchvision's ImageClassification applies after its resize and crop (uint8 -> /255 -> (x - mean) / std)."""
    from torchvision.transforms import functional as F  # the functions the preset calls

    def to_input(picture: Image.Image) -> torch.Tensor:
        pixels = F.pil_to_tensor(picture)  # (3, S, S) uint8
        return F.normalize(F.convert_image_dtype(pixels, torch.float), mean=list(loaded.mean), std=list(loaded.std))

    return to_input


class _Attributions(Mapping[str, Attribution]):
    """A session's attributions by method: each map from the cache, computed again if it was evicted."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def __getitem__(self, method: str) -> Attribution:
        return self._session.attribution(method)

    def __iter__(self) -> Iterator[str]:
        return iter(self._session.recipes)

    def __len__(self) -> int:
        return len(self._session.recipes)


@dataclass(frozen=True, eq=False)
class Session:
    """One visitor's results: the picture the network saw, how each attribution was computed, and the
    :class:`~alexnet_viz.export.Scene` that says what each panel on their screen shows (the Download button
    writes exactly that). Immutable: every handler returns a new one.

    ``analysis`` and ``attributions`` read the pool's :class:`ResultCache` and compute what it no longer holds,
    on the main replica (a forward pass, a quick map) or, for a slow method, on the restore replica. Make one with
    :meth:`start`.
    """

    pool: ModelPool = field(repr=False)
    key: str  # this image's entries in the cache: a new one per analysed image
    arch: str  # the pool's name of the model: an architecture, or "trained:<run>"
    device: str
    view: Image.Image  # (S, S) RGB: what the network saw; the input is computed back from it
    input: torch.Tensor | None  # kept only if the view does not give the input back bit for bit
    timings: Mapping[str, float]
    recipes: Mapping[str, Recipe] = field(default_factory=lambda: MappingProxyType({}))
    scene: Scene = field(default_factory=Scene)

    @classmethod
    def start(cls, pool: ModelPool, loaded: LoadedModel, analysis: Analysis, *, name: str | None = None) -> Session:
        """A new session for ``analysis`` (made by ``analyze(loaded, ...)``), its tensors put in the cache.
        ``name``: the pool's name of ``loaded`` (default: looked up; a model trained here is "trained:<run>")."""
        exact = torch.equal(_pixels_to_input(loaded)(analysis.view).unsqueeze(0), analysis.input)
        session = cls(pool=pool, key=uuid.uuid4().hex, arch=name or pool.name_of(loaded), device=analysis.device,
                      view=analysis.view, input=None if exact else analysis.input, timings=analysis.timings)
        pool.results.put((session.key, "analysis"), analysis)
        return session

    def model(self, lane: Lane = "main") -> LoadedModel:
        return self.pool.get(self.arch, self.device, lane)

    def network_input(self) -> torch.Tensor:
        """(1, 3, S, S): exactly the tensor the first forward pass was given."""
        if self.input is not None:
            return self.input
        return _pixels_to_input(self.model())(self.view).unsqueeze(0)

    @property
    def analysis(self) -> Analysis:
        return self.pool.results.get_or_compute((self.key, "analysis"), self._analyse_again)

    def _analyse_again(self) -> Analysis:
        x = self.network_input()
        loaded = replace(self.model(), transform=lambda _picture: x[0])  # the same module, lock and hooks
        return replace(analyze(loaded, self.view), timings=self.timings)  # the first pass's timings stay

    @property
    def attributions(self) -> Mapping[str, Attribution]:
        return _Attributions(self)

    def attribution(self, method: str) -> Attribution:
        recipe = self.recipes[method]
        lane: Lane = "restore" if METHODS[method].slow else "main"
        return self.pool.results.get_or_compute((self.key, recipe),
                                                lambda: recipe.compute(self.model(lane), self.network_input()))

    def with_attribution(self, attr: Attribution) -> Session:
        recipe = Recipe.of(attr)
        self.pool.results.put((self.key, recipe), attr)
        return replace(self, recipes=MappingProxyType({**self.recipes, attr.method: recipe}))

    def with_scene(self, **changes: Any) -> Session:
        return replace(self, scene=replace(self.scene, **changes))


class LatestImages:
    """Which analysis is each visitor's latest (their Gradio session hash -> the :class:`Session` key), for the
    last ``capacity`` visitors: the pictures of an image the visitor has already replaced are not sent.

    The page draws a new image's pictures in an event of its own, after the top-5. If the visitor gives another
    image while that event runs, Gradio would write the older session over the newer one when it ends (a
    session is a ``gr.State``, kept on the server and read when an event starts), and the newer image's
    pictures would then be drawn from the older session. A visitor this registry has forgotten is drawn for.
    """

    def __init__(self, capacity: int = STATE_CAPACITY) -> None:
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def record(self, visitor: str, key: str) -> None:
        with self._lock:
            self._keys[visitor] = key
            self._keys.move_to_end(visitor)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)

    def is_latest(self, visitor: str, key: str) -> bool:
        with self._lock:
            return self._keys.get(visitor, key) == key

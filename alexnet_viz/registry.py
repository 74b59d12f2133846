"""A table of named descriptions (attribution methods now; objectives and metrics later) that the CLI's
choices, the page's controls and the API are all generated from, so adding one is one entry.

A :class:`Registry` is a mapping ``name -> spec`` in the order entries were added. ``register`` adds one
(refusing a second of the same name); a test can add one for its own duration with ``monkeypatch.setitem``
or :meth:`Registry.added`, and everything built from the registry afterwards shows it.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Protocol, TypeVar

__all__ = ["Named", "Registry"]


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(MutableMapping[str, T]):
    """``name -> spec``, each spec's ``name`` equal to its key."""

    def __init__(self, kind: str, specs: tuple[T, ...] = ()) -> None:
        self.kind = kind  # "attribution method": used in messages
        self._specs: dict[str, T] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: T) -> T:
        """Add ``spec``; a name already taken is a ValueError (replace on purpose with ``registry[name] = spec``)."""
        if spec.name in self._specs:
            raise ValueError(f"There is already an {self.kind} called {spec.name!r}.")
        self[spec.name] = spec
        return spec

    @contextmanager
    def added(self, spec: T) -> Iterator[T]:
        """``spec`` registered inside the block only (for tests and experiments)."""
        self.register(spec)
        try:
            yield spec
        finally:
            del self[spec.name]

    def __getitem__(self, name: str) -> T:
        return self._specs[name]

    def __setitem__(self, name: str, spec: T) -> None:
        if name != spec.name:
            raise ValueError(f"An {self.kind} is registered under its own name, not {name!r} for {spec.name!r}.")
        self._specs[name] = spec

    def __delitem__(self, name: str) -> None:
        del self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._specs)})"

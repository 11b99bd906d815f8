"""A registry per policy family, keyed by the config's ``kind``.

Built-ins register with ``@REGISTRY.register("kind")``; third-party packages add theirs through
the entry-point group ``moesim.policies`` (entry point name ``<family>.<kind>``, value
``module:Class``). A duplicate key raises; a plugin that fails to import raises when the
scenario asks for it.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Callable, Generic, TypeVar

from moesim.core.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named factories of one policy family."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, kind: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator adding a factory under ``kind``; a second registration of a kind raises."""
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if kind in self._items and self._items[kind] is not factory:
                raise ValueError(f"{self.family} policy {kind!r} is already registered")
            self._items[kind] = factory
            return factory
        return deco

    def kinds(self) -> list[str]:
        """Registered kinds, built-in and (once loaded) plugins."""
        self._load_plugins()
        return sorted(self._items)

    def _load_plugins(self) -> None:
        for ep in metadata.entry_points(group="moesim.policies"):
            family, _, kind = ep.name.partition(".")
            if family == self.family and kind not in self._items:
                self._items[kind] = ep.load()

    def build(self, kind: str, **kwargs: Any) -> T:
        """Instantiate the policy ``kind``; ConfigError listing the known kinds if absent."""
        if kind not in self._items:
            self._load_plugins()
        if kind not in self._items:
            raise ConfigError(f"unknown {self.family} policy {kind!r}; known: {', '.join(self.kinds())}",
                              field=f"{self.family}.kind")
        return self._items[kind](**kwargs)

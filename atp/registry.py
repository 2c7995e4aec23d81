"""Name -> object registries (architectures, retention scorers, backends).

Registration happens by decorator at import time of the module that defines
the entry; ``Registry.get`` imports the registry's provider modules lazily so
that listing or resolving a name never needs the caller to know where it lives.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterable, TypeVar

from atp.errors import AtpError, ConfigError

T = TypeVar("T")


def import_submodules(package: str, path, skip: Iterable[str] = ()) -> list[str]:
    """Import every module of ``package`` (its ``__path__``) except ``skip``, in name order: the modules register
    their entries by decorator, so adding one is adding a file. Returns the imported module names."""
    import pkgutil

    names = sorted(m.name for m in pkgutil.iter_modules(path) if m.name not in set(skip) and not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names


class Registry(Generic[T]):
    """A named registry with lazy provider imports.

    Args:
        kind: What the entries are, used in error messages ("architecture").
        providers: Modules whose import registers the entries.
    """

    def __init__(self, kind: str, providers: Iterable[str] = ()):
        self.kind = kind
        self._providers = tuple(providers)
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is an error."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise AtpError(f"duplicate {self.kind} name {name!r}")
            self._entries[name] = obj
            return obj

        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._providers:
                importlib.import_module(mod)

    def names(self) -> list[str]:
        """Sorted registered names (imports the providers)."""
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``, or a ConfigError listing the known names."""
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or '(none)'}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


ARCHITECTURES: Registry = Registry("architecture", ["atp.export.adapters"])
TOWERS: Registry = Registry("vision tower", ["atp.export.towers"])
SCORERS: Registry = Registry("scorer", ["atp.calibration.retention"])
BACKENDS: Registry = Registry("backend", ["atp.runtime.backends"])

"""Old import paths of names that moved: they keep working, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import warnings
from types import ModuleType


def moved_names(old_module: str, moves: dict[str, ModuleType]):
    """A module-level ``__getattr__`` for ``old_module``: each name of ``moves`` is served from its new module.

    The new modules are passed as module objects (imported at the top of the
    old module), so the import graph that tests/test_import_cycles.py walks
    sees the dependency.
    """

    def __getattr__(name: str):
        new = moves.get(name)
        if new is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} has moved to {new.__name__}.{name}; import it from there "
                      f"(the old path will be removed)", DeprecationWarning, stacklevel=2)
        return getattr(new, name)

    return __getattr__

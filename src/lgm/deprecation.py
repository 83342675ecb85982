"""Old import paths of names that moved: they keep working, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import warnings
from types import ModuleType


def moved_names(old_module: str, moves: dict[str, ModuleType | tuple[ModuleType, str]]):
    """A module-level ``__getattr__`` for ``old_module``: each name of ``moves`` is served from its new module.

    A value is the new module (same name there) or (new module, new name). The
    new modules are passed as module objects (imported at the top of the old
    module), so the import graph that tests/test_import_cycles.py walks sees
    the dependency.
    """

    def __getattr__(name: str):
        new = moves.get(name)
        if new is None:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, new_name = new if isinstance(new, tuple) else (new, name)
        warnings.warn(f"{old_module}.{name} has moved to {module.__name__}.{new_name}; import it from there "
                      f"(the old path will be removed)", DeprecationWarning, stacklevel=2)
        return getattr(module, new_name)

    return __getattr__


def replaced(old: str, new: str) -> None:
    """Warn that the function ``old`` (still working) is replaced by ``new``."""
    warnings.warn(f"{old} is replaced by {new}, which it now calls (the old name will be removed)",
                  DeprecationWarning, stacklevel=3)

"""User functions a saved model refers to by name: a loss function, a ``Lambda`` layer's
function. A saved model holds JSON only (loading one never runs code it carries), so it
names them and the loader looks the names up, as Keras does: in the ``custom_objects``
given to ``load_model`` (a scope, here), then in :func:`get_custom_objects`, the
process's own table (Keras' ``get_custom_objects()["my_loss"] = my_loss``).
"""
from __future__ import annotations

import contextlib
import contextvars

from dlrun.errors import ConfigError

_GLOBAL: dict[str, object] = {}
_SCOPE: contextvars.ContextVar[tuple] = contextvars.ContextVar("custom_objects", default=())


def get_custom_objects() -> dict:
    """The process's table of named user objects (edit it in place)."""
    return _GLOBAL


@contextlib.contextmanager
def custom_object_scope(objects: dict | None):
    """Within the ``with`` block, names in ``objects`` resolve to their values first."""
    if objects is not None and not isinstance(objects, dict):
        raise ConfigError(f"custom_objects must be a dict of name -> function, got "
                          f"{type(objects).__name__}")
    token = _SCOPE.set(_SCOPE.get() + (dict(objects or {}),))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def lookup(name: str):
    """The object registered under ``name`` (innermost scope first), or None."""
    for objects in reversed(_SCOPE.get()):
        if name in objects:
            return objects[name]
    return _GLOBAL.get(name)


def hint(name: str) -> str:
    """How to give a loader the user function called ``name``."""
    return (f"pass it when loading, load_model(path, custom_objects={{{name!r}: {name}}}), "
            f"or register it once: dlrun.engine.custom_objects.get_custom_objects()"
            f"[{name!r}] = {name}")

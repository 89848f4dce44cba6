"""The registry of variants: a model joins by decorating its class in its own file.

    @register_model("beta_vae")
    class BetaVAE(BaseVAE): ...

Everything that needs to know the variants (the CLI's run folders and help, checkpoint
loading, ``compare``, the config tests) asks here; there is no table to edit. The variants of
this package are registered when :mod:`vae_zoo.models` is imported; variants of other
packages join when their module is imported (a ``class_path`` in a config or checkpoint
imports it) or through the ``vae_zoo.models`` entry-point group of an installed package.
"""

import importlib
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

_MODELS: dict[str, type] = {}
ENTRY_POINT_GROUP = "vae_zoo.models"
_plugins_loaded = False


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def register_model(name: str | None = None) -> Callable[[T], T]:
    """Class decorator adding a variant under ``name`` (default: its class name in snake_case)."""

    def add(cls: T) -> T:
        key = name or _snake(cls.__name__)
        known = _MODELS.get(key)
        if known is not None and _path(known) != _path(cls):
            raise ValueError(f"variant name {key!r} is taken by {_path(known)}")
        _MODELS[key] = cls
        cls.variant_name = key
        return cls

    return add


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def load_plugins() -> None:
    """Import the modules that installed packages list under the ``vae_zoo.models`` group."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def list_models(plugins: bool = True) -> dict[str, type]:
    """Every registered variant, ``{name: class}``, sorted by name (with installed plugins)."""
    if plugins:
        load_plugins()
    return dict(sorted(_MODELS.items()))


def get_model_class(name: str) -> type:
    """The class of a variant name (``beta_vae``), class name (``BetaVAE``) or dotted path."""
    models = list_models()
    if name in models:
        return models[name]
    for cls in models.values():
        if cls.__name__ == name:
            return cls
    cls = class_from_path(name) if "." in name else None
    if cls is None:
        raise KeyError(f"unknown variant {name!r}; registered: {', '.join(models)}")
    return cls


def class_from_path(class_path: str) -> type | None:
    """The class a dotted path names (importing its module), or None when it cannot."""
    module, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) else None


def variant_name(model: Any) -> str:
    """The registry name of a model, model class or class path (else the class name).

    A class that did not register itself is named by its class name in snake_case, so a
    subclass never borrows its parent's name (and its parent's run folders).
    """
    cls = model if isinstance(model, type) else type(model)
    if isinstance(model, str):
        found = class_from_path(model)
        if found is None:
            return model.rpartition(".")[2]
        cls = found
    name = cls.__dict__.get("variant_name")
    if isinstance(name, str) and _MODELS.get(name) is cls:
        return name
    return _snake(cls.__name__)


def summary(cls: type) -> str:
    """The first line of a variant's docstring (for listings)."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""

"""The VAE variants: each is one file here, a :class:`BaseVAE` subclass registered by decorator.

Importing this package imports every module in it, so each variant registers itself (see
:mod:`vae_zoo.models.registry`) and is reachable as ``vae_zoo.models.<ClassName>``, the
``class_path`` the configs use. Adding a variant is adding a file; nothing here changes.
"""

import importlib
import pkgutil

from vae_zoo.models.base import BaseVAE, BatchEvaluation, ForwardPass
from vae_zoo.models.registry import (
    get_model_class,
    list_models,
    register_model,
    variant_name,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

#: this package's variants by class name, exported so that vae_zoo.models.BetaVAE resolves
_OWN = {
    cls.__name__: cls
    for cls in list_models(plugins=False).values()
    if cls.__module__.startswith(f"{__name__}.")
}
globals().update(_OWN)

__all__ = [
    "BaseVAE",
    "BatchEvaluation",
    "ForwardPass",
    "get_model_class",
    "list_models",
    "register_model",
    "variant_name",
    *sorted(_OWN),
]

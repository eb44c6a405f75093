"""The testbed models, one per file; each file ends with ``TESTBED = Testbed(...)``. A learner's own model
becomes a `Testbed` too (`hepml_kit.models.user.testbed`), and `get` takes it wherever a name goes.

Importing this package does not import torch: `names()` and `MODEL_MODULES` are plain data, `get(name)`
imports a model module on demand, and `Testbed`, `fit`, `to_device` and the model modules
(`models.tracking_gnn`, ...) load on first use (PEP 562 module ``__getattr__``), so `hepml_kit.models.cli`
builds the parser without torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hepml_kit.models._testbed import Testbed

MODEL_MODULES = {
    "tracking_gnn": "hepml_kit.models.tracking_gnn",
    "waveform_vae": "hepml_kit.models.waveform_vae",
    "calo_gan": "hepml_kit.models.calo_gan",
    "jet_transformer": "hepml_kit.models.jet_transformer",
    "cosmo_unet": "hepml_kit.models.cosmo_unet",
}
_FROM_TESTBED = ("Testbed", "fit", "to_device")  # hepml_kit.models._testbed imports torch

__all__ = ["MODEL_MODULES", "Testbed", "fit", "get", "names", "to_device"]


def __getattr__(name: str):
    if name in _FROM_TESTBED:
        return getattr(importlib.import_module("hepml_kit.models._testbed"), name)
    if name in MODEL_MODULES:
        return importlib.import_module(MODEL_MODULES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def names() -> list[str]:
    return list(MODEL_MODULES)


def get(name: str | Testbed) -> Testbed:
    """The `Testbed` of `name`: a built-in name (one of `names()`), a `Testbed` object (returned as it is), or
    a spec ``path/to/file.py:NAME`` / ``package.module:NAME`` naming a learner's own (`user.load`)."""
    from hepml_kit.models._testbed import Testbed

    if isinstance(name, Testbed):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a model is a name, a spec file.py:NAME or a Testbed, got {type(name).__name__}")
    if ":" in name:
        from hepml_kit.models.user import load

        return load(name)
    key = name.replace("-", "_")
    if key not in MODEL_MODULES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_MODULES)}, or name your "
                         "own as path/to/file.py:NAME or package.module:NAME")
    return importlib.import_module(MODEL_MODULES[key]).TESTBED

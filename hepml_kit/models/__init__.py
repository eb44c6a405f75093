"""The testbed models, one per file; each file ends with ``TESTBED = Testbed(...)``.

`get(name)` imports a model module on demand (so `import hepml_kit.models` stays light)."""

from __future__ import annotations

import importlib

from hepml_kit.models._testbed import Testbed, fit, to_device

MODEL_MODULES = {
    "tracking_gnn": "hepml_kit.models.tracking_gnn",
    "waveform_vae": "hepml_kit.models.waveform_vae",
    "calo_gan": "hepml_kit.models.calo_gan",
    "jet_transformer": "hepml_kit.models.jet_transformer",
    "cosmo_unet": "hepml_kit.models.cosmo_unet",
}

__all__ = ["MODEL_MODULES", "Testbed", "fit", "get", "names", "to_device"]


def names() -> list[str]:
    return list(MODEL_MODULES)


def get(name: str) -> Testbed:
    """The `Testbed` of model `name` (one of `names()`)."""
    key = name.replace("-", "_")
    if key not in MODEL_MODULES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_MODULES)}")
    return importlib.import_module(MODEL_MODULES[key]).TESTBED

"""The testbed models, one per file; each file ends with ``TESTBED = Testbed(...)``. A learner's own model
becomes a `Testbed` too (`hepml_kit.models.user.testbed`), and `get` takes it wherever a name goes.

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


def get(name: str | Testbed) -> Testbed:
    """The `Testbed` of `name`: a built-in name (one of `names()`), a `Testbed` object (returned as it is), or
    a spec ``path/to/file.py:NAME`` / ``package.module:NAME`` naming a learner's own (`user.load`)."""
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

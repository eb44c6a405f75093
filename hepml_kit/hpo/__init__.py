"""Hyperparameter optimisation at scale and many-model training.

- `space`: one `SearchSpace` (Float / Int / Categorical, or a plain dict) for every backend.
- `objective`: `TestbedObjective`, a testbed model's validation physics metric reported per epoch.
- `optuna_backend`: random, grid, TPE, CMA-ES; ASHA and Hyperband pruning; parallel trials on the kit's
  workers through a journal or SQLite file; trials that are 2-rank DDP jobs; resume after a kill.
- `ray_backend`: Ray Tune with ASHA, PBT and a Bayesian searcher on a local Ray cluster (optional extra).
- `compare`: the comparison study (best-so-far against compute for six methods).
- `farm`: FastCaloGAN-style many-model training over the workers.

Names are imported on first use, so ``import hepml_kit.hpo`` stays light (Optuna and Ray load when needed).

Taught in curriculum/06_hpo and curriculum/07_ensembles.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SearchSpace": "space", "Float": "space", "Int": "space", "Categorical": "space",
    "SearchSpaceError": "space", "TestbedObjective": "objective", "TrialRun": "objective",
    "ObjectiveError": "objective", "TrialDiverged": "objective",
    "StudySpec": "optuna_backend", "run_study": "optuna_backend", "open_study": "optuna_backend",
    "study_history": "optuna_backend", "StudyMismatch": "optuna_backend", "StudyBusy": "optuna_backend",
    "retry_stale_trials": "optuna_backend",
    "ray_session": "ray_backend", "run_tune": "ray_backend",
    "compare_methods": "compare", "Comparison": "compare", "METHODS": "compare",
    "FarmJob": "farm", "farm_jobs": "farm", "farm_models": "farm", "farm_table": "farm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

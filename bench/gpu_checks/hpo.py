"""GPU check of the HPO pieces that need neither Optuna nor Ray (the GPU host has neither).

`gpu_check()` trains a `TrialRun` of the waveform VAE on the GPU (``device="auto"`` must pick CUDA), and
checks the PBT state round trip there: a trial that loads another trial's state continues from its epoch with
its own learning rate. Run by bench/gpu_check.py (it was registered nowhere before); returns a dict of
what it measured.
"""

from __future__ import annotations

from gpu_checks.common import Check


def gpu_check() -> dict:
    import time

    import torch

    from hepml_kit.hpo.objective import TestbedObjective

    if not torch.cuda.is_available():
        raise RuntimeError("gpu_check needs a CUDA device")
    objective = TestbedObjective("waveform_vae", "auc", events=4096, val_events=2048,
                                 batch_size=128, epochs=3)
    t0 = time.perf_counter()
    donor = objective.start({"lr": 3e-3, "latent_dim": 8})
    aucs = [donor.train_epoch()["auc"] for _ in range(2)]
    seconds = time.perf_counter() - t0
    if not next(donor.model.parameters()).is_cuda:
        raise AssertionError("TrialRun with device='auto' did not put the model on the GPU")
    receiver = objective.start({"lr": 1e-3, "latent_dim": 8})
    receiver.load_state_dict(donor.state_dict())
    lrs = {g["lr"] for o in receiver._optimizers() for g in o.param_groups}
    if receiver.epoch != 2 or lrs != {1e-3}:
        raise AssertionError(f"PBT copy wrong: epoch {receiver.epoch} (want 2), "
                             f"learning rates {lrs} (want 1e-3)")
    after = receiver.train_epoch()["auc"]
    return {"device": torch.cuda.get_device_name(), "auc_per_epoch": aucs + [after],
            "seconds_2_epochs": seconds}


CHECKS = [Check("hpo_trial_auto_device", gpu_check, budget_s=40, cuda_only=True)]

"""Benchmark: what scoring one trial-epoch costs in the HPO lesson, the kit's way against the plain way.

Every trial-epoch of lesson 06 (the waveform VAE's anomaly AUC, tiny preset, 512 training and 2048
validation waveforms, one thread) trains one epoch and then scores the whole validation set: the anomaly
score of every waveform and six ROC AUCs (overall, -ELBO, one per anomaly kind). Two ways of scoring, in
interleaved repeats on the same trained model (the machine is shared and noisy: medians):

- kit: `waveform_vae.metrics` as shipped: scores in batches of 512, AUCs from ranks (Mann-Whitney);
- plain: the same model scored in batches of 1024 (the kit's earlier default), AUCs with
  ``sklearn.metrics.roc_auc_score`` (the kit's earlier implementation).

Also prints one training epoch's time, to show what share of a trial-epoch the scoring is, and checks that
both ways give the same AUCs (to 1e-12).

    .venv/bin/python bench/hpo_evaluation.py [--repeats 10] [--seeds 0 1 2]

Ends with one ``RESULT ...`` line.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sklearn.metrics import roc_auc_score

from hepml_kit.hpo import TestbedObjective
from hepml_kit.models import waveform_vae as wv


def plain_metrics(model, data: dict) -> dict:
    """The scoring of the kit before: batches of 1024, sklearn's AUC (the same six AUCs)."""
    mse, nelbo = wv.anomaly_scores(model, data, batch_size=1024)
    label, kind = data["anomaly"].astype(bool), data["anomaly_kind"]
    out = {"auc": roc_auc_score(label, mse), "auc_neg_elbo": roc_auc_score(label, nelbo)}
    for k, name in enumerate(wv.ANOMALY_KINDS[1:], start=1):
        if (kind == k).any():
            sel = (kind == k) | ~label
            out[f"auc_{name}"] = roc_auc_score(label[sel], mse[sel])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    kit, plain, train, max_diff = [], [], [], 0.0
    for seed in args.seeds:
        objective = TestbedObjective("waveform_vae", "auc", preset="tiny", events=512, val_events=2048,
                                     batch_size=32, epochs=6, seed=seed)
        run = objective.start({"lr": 3e-3, "latent_dim": 8, "beta": 0.1})
        for _ in range(objective.epochs):  # a trained model (as a trial's last epoch scores), data made first
            run.train_epoch()
        val = objective.validation_data()
        ours, theirs = wv.metrics(run.model, val), plain_metrics(run.model, val)
        diff = max(abs(ours[k] - v) for k, v in theirs.items())
        assert diff < 1e-12, f"the two ways disagree by {diff}"
        max_diff = max(max_diff, diff)
        arms = [(kit, wv.metrics), (plain, plain_metrics)]
        for r in range(args.repeats):
            for times, score in arms if r % 2 == 0 else arms[::-1]:
                start = time.perf_counter()
                score(run.model, val)
                times.append(time.perf_counter() - start)
        run.evaluate = dict  # train_epoch scores the model after training: time the training alone
        start = time.perf_counter()
        run.train_epoch()
        train.append(time.perf_counter() - start)
        print(f"seed {seed}: AUC {ours['auc']:.4f} after {objective.epochs} epochs, both ways (max diff "
              f"{diff:.1e}); scoring kit "
              f"{statistics.median(kit[-args.repeats:]) * 1e3:.1f} ms, plain "
              f"{statistics.median(plain[-args.repeats:]) * 1e3:.1f} ms", flush=True)
    k, p, t = statistics.median(kit), statistics.median(plain), statistics.median(train)
    print(f"scoring 2048 waveforms: kit {k * 1e3:.1f} ms, plain {p * 1e3:.1f} ms ({p / k:.2f}x); "
          f"one training epoch {t * 1e3:.1f} ms: a trial-epoch {(t + k) * 1e3:.0f} ms against "
          f"{(t + p) * 1e3:.0f} ms ({(t + p) / (t + k):.2f}x)")
    print(f"RESULT evaluate_kit_s={k:.4f} evaluate_plain_s={p:.4f} ratio_plain_over_kit={p / k:.3f} "
          f"train_epoch_s={t:.4f} trial_epoch_ratio={(t + p) / (t + k):.3f} seeds={len(args.seeds)} "
          f"max_auc_diff={max_diff:.3g}")


if __name__ == "__main__":
    main()

"""`hepml-kit models` and `hepml-kit validate`: their arguments (`add_parser`) and what they do
(`models_main`, `validate_main`), and the model-name argument types (`model_name`, `model_choice`) that
`hepml-kit data` shares.

Importing this module does not import torch (the parser takes its choices from `hepml_kit.models.names()`), so
that ``OMP_WAIT_POLICY=PASSIVE`` can be set before torch loads OpenMP: on a shared machine, spinning OpenMP
threads made tiny-preset training 20-60x slower. Tiny presets train on the CPU in one process with
``min(2, cores)`` threads.

Exit status: 0 when the command ran (for `validate` the verdict is ``threshold_met`` in its RESULT line;
with ``--strict`` a missed threshold exits 3), 2 for bad input (unknown model or preset, bad numbers, an
existing data set), 1 when a data set fails its checks or something else goes wrong.
"""

from __future__ import annotations

import argparse
import os
import sys

from hepml_kit.models import MODEL_MODULES

__all__ = ["MODEL_NAMES", "add_parser", "cpu_threads", "fail", "model_choice", "model_name", "models_main",
           "quiet_openmp", "validate_main"]

MODEL_NAMES = tuple(MODEL_MODULES)  # == hepml_kit.models.names(), without importing torch


def model_name(text: str) -> str:
    """argparse ``type``: ``tracking-gnn`` and ``tracking_gnn`` both name the tracking model; a learner's own
    testbed is named by a spec ``path/to/file.py:NAME`` or ``package.module:NAME`` (kept as written)."""
    if ":" in text:
        return text.strip()
    return text.strip().replace("-", "_").lower()


def model_choice(text: str) -> str:
    """argparse ``type``: `model_name`, refused unless a built-in name or a spec (argparse's "invalid
    choice")."""
    name = model_name(text)
    if ":" not in name and name not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(MODEL_NAMES)}, or name your own testbed as "
            "path/to/file.py:NAME or package.module:NAME)")
    return name


def quiet_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning; call before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_threads(n: int | None) -> int:
    """Give torch `n` CPU threads (default ``min(2, cores)``); returns the number set."""
    import torch

    n = n or min(2, os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def fail(message: str, code: int) -> int:
    """Print ``hepml-kit: error: message`` on stderr; return the exit status `code`."""
    print(f"hepml-kit: error: {message}", file=sys.stderr)
    return code


def _si(x: float | None) -> str:
    if x is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {suffix}"
    return f"{x:.3g}"


def models_main(args) -> int:
    """`hepml-kit models [--json]`: every model and preset, parameters and training FLOPs per sample."""
    quiet_openmp()
    from hepml_kit.models.validate import model_table

    try:
        rows = model_table(args.model or None)
    except ValueError as e:
        return fail(str(e), 2)
    if args.json:
        import json

        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':<16} {'preset':<6} {'parameters':>11} {'FLOPs/sample':>13}  unit      paper")
    for r in rows:
        print(f"{r['model']:<16} {r['preset']:<6} {_si(r['parameters']):>11} "
              f"{_si(r['flops_per_sample']):>13}  {r['unit']:<9} {r['paper'][:70]}")
    print("FLOPs/sample: forward + backward (about 3x forward) for one sample of the preset's training data.")
    return 0


def validate_main(args) -> int:
    """`hepml-kit validate MODEL --seed S --preset P`: train, print metrics and one RESULT line."""
    if args.seed < 0:
        return fail(f"--seed must be >= 0; got {args.seed}", 2)
    quiet_openmp()
    import torch

    from hepml_kit.models.validate import result_line, validate

    device = args.device
    if device == "auto":
        device = "cuda" if (args.preset != "tiny" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return fail("--device cuda but no CUDA device is visible", 2)
    if device == "cpu":
        cpu_threads(args.threads)
    try:
        results = validate(args.model, seed=args.seed, preset=args.preset, device=device, log=print,
                           plots=args.plots)
    except ValueError as e:
        return fail(str(e), 2)
    except (ImportError, SyntaxError) as e:  # a learner's model file that does not import
        return fail(f"{args.model}: {type(e).__name__}: {e}", 2)
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"  {key:<{width}} = {shown}")
    print(result_line(results), flush=True)
    return 3 if (args.strict and not results["threshold_met"]) else 0


def add_parser(sub) -> None:
    """Register `models` and `validate` on the `hepml-kit` subparsers `sub`."""
    models = ", ".join(MODEL_NAMES)
    p = sub.add_parser("models", help="list the testbed models and presets: parameters, FLOPs per sample")
    p.add_argument("model", nargs="*", type=model_name, metavar="MODEL",
                   help=f"only these models ({models}, or your own as path/to/file.py:NAME)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(func=models_main)

    p = sub.add_parser(
        "validate", help="train a testbed preset from fresh Monte Carlo and check its physics threshold",
        description="Generate fresh events with --seed (evaluation events with seed + 1), train the preset, "
        "print the physics metrics, and end with one line 'RESULT name=value ... threshold_met=1|0'. "
        "Exit status 0 whenever it ran (threshold_met carries the verdict; with --strict a missed "
        "threshold exits 3), 2 for bad arguments, 1 on errors. Names with '-' instead of '_' are accepted.",
    )
    p.add_argument("model", type=model_choice,
                   help=f"the testbed model ({models}) or your own as path/to/file.py:NAME "
                        "or package.module:NAME")
    p.add_argument("--seed", type=int, default=0, help="seed of the training events (default 0)")
    p.add_argument("--preset", default="tiny", choices=["tiny", "small", "full"],
                   help="model preset (default tiny)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: tiny on the CPU, larger presets on a GPU when present")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default min(2, cores))")
    p.add_argument("--strict", action="store_true", help="exit 3 when the threshold is not met")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="write the model's physics plots (PNG) into DIR (default: none)")
    p.set_defaults(func=validate_main)

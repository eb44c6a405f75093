"""What `hepml-kit models`, `hepml-kit validate` and `hepml-kit data` do once their arguments are parsed.

Importing this module does not import torch (the parser uses `MODEL_NAMES` for its choices), so that
``OMP_WAIT_POLICY=PASSIVE`` can be set before torch loads OpenMP: on a shared machine, spinning OpenMP
threads made tiny-preset training 20-60x slower. Tiny presets train on the CPU in one process with
``min(2, cores)`` threads.

Exit status: 0 when the command ran (for `validate` the verdict is ``threshold_met`` in its RESULT line;
with ``--strict`` a missed threshold exits 3), 2 for bad input (unknown model or preset, bad numbers, an
existing data set), 1 when a data set fails its checks or something else goes wrong.
"""

from __future__ import annotations

import os
import sys

__all__ = ["MODEL_NAMES", "data_main", "model_choice", "model_name", "models_main", "validate_main"]

# == hepml_kit.models.names() (tests/test_validate_cli.py checks); listed here so no torch import is needed
MODEL_NAMES = ("tracking_gnn", "waveform_vae", "calo_gan", "jet_transformer", "cosmo_unet")


def model_name(text: str) -> str:
    """argparse ``type``: ``tracking-gnn`` and ``tracking_gnn`` both name the tracking model; a learner's own
    testbed is named by a spec ``path/to/file.py:NAME`` or ``package.module:NAME`` (kept as written)."""
    if ":" in text:
        return text.strip()
    return text.strip().replace("-", "_").lower()


def model_choice(text: str) -> str:
    """argparse ``type``: `model_name`, refused unless a built-in name or a spec (argparse's "invalid
    choice")."""
    import argparse

    name = model_name(text)
    if ":" not in name and name not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from {', '.join(MODEL_NAMES)}, or name your own testbed as "
            "path/to/file.py:NAME or package.module:NAME)")
    return name


def _quiet_openmp() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cpu_threads(n: int | None) -> int:
    import torch

    n = n or min(2, os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _fail(message: str, code: int) -> int:
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
    _quiet_openmp()
    from hepml_kit.models.validate import model_table

    try:
        rows = model_table(args.model or None)
    except ValueError as e:
        return _fail(str(e), 2)
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


def _write_user_items(args) -> int:
    """`hepml-kit data generate file.py:NAME`: a learner's testbed has no generator; its first --events
    training
    items (in the order --seed draws them, collated as its batches) are written as a table data set."""
    from hepml_kit.data.writer import write_table
    from hepml_kit.models import get

    try:
        tb = get(args.model)
        cfg = tb.config(args.preset)
        batch = next(tb.batches(tb.generate(cfg, args.events, args.seed), args.events))
        columns = {k: v.numpy() for k, v in batch.items() if hasattr(v, "numpy")}
        m = write_table(columns, args.shards, args.out, overwrite=args.overwrite,
                        source={"testbed": args.model, "seed": args.seed, "events": args.events},
                        progress=False if args.quiet else None,
                        log=(lambda line: None) if args.quiet else print)
    except (ValueError, TypeError) as e:
        return _fail(str(e), 2)
    print(f"wrote {m['n_events']} items of {tb.name} ({', '.join(m['schema'])}) in "
          f"{len(m['shards'])} shards to {args.out}; read them back with testbed(..., data={args.out!r})")
    return 0


def validate_main(args) -> int:
    """`hepml-kit validate MODEL --seed S --preset P`: train, print metrics and one RESULT line."""
    if args.seed < 0:
        return _fail(f"--seed must be >= 0; got {args.seed}", 2)
    _quiet_openmp()
    import torch

    from hepml_kit.models.validate import result_line, validate

    device = args.device
    if device == "auto":
        device = "cuda" if (args.preset != "tiny" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda but no CUDA device is visible", 2)
    if device == "cpu":
        _cpu_threads(args.threads)
    try:
        results = validate(args.model, seed=args.seed, preset=args.preset, device=device, log=print,
                           plots=args.plots)
    except ValueError as e:
        return _fail(str(e), 2)
    except (ImportError, SyntaxError) as e:  # a learner's model file that does not import
        return _fail(f"{args.model}: {type(e).__name__}: {e}", 2)
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"  {key:<{width}} = {shown}")
    print(result_line(results), flush=True)
    return 3 if (args.strict and not results["threshold_met"]) else 0


def data_main(args) -> int:
    """`hepml-kit data generate ...`, `hepml-kit data convert INPUT...` and `hepml-kit data verify DIR`."""
    _quiet_openmp()
    from hepml_kit.data import ShardError, ShardSet, write_shards

    if args.action == "generate":
        _cpu_threads(args.threads)
        if ":" in args.model:
            return _write_user_items(args)
        try:
            m = write_shards(args.model, args.events, args.shards, args.out, seed=args.seed,
                             preset=args.preset, overwrite=args.overwrite,
                             progress=False if args.quiet else None)
        except ValueError as e:
            return _fail(str(e), 2)
        size = sum(s["bytes"] for s in m["shards"])
        print(f"wrote {m['n_events']} events of {m['model']} ({m['generator_version']}, seed {m['seed']}) in "
              f"{len(m['shards'])} shards, {size / 1e6:.1f} MB, to {args.out}")
        return 0
    if args.action == "convert":
        from hepml_kit.data.convert import ConvertError, convert_files

        branches = [b.strip() for b in args.branches.split(",") if b.strip()] if args.branches else None
        quiet = (lambda line: None) if args.quiet else print
        try:
            m = convert_files(args.inputs, args.shards, args.out, tree=args.tree,
                              branches=branches, cut=args.cut, overwrite=args.overwrite,
                              progress=False if args.quiet else None, log=quiet)
        except ConvertError as e:
            return _fail(str(e), 2)
        size = sum(s["bytes"] for s in m["shards"])
        print(f"wrote {m['n_events']} events ({', '.join(m['schema'])}) from {len(args.inputs)} file(s) in "
              f"{len(m['shards'])} shards, {size / 1e6:.1f} MB, to {args.out}; check "
              f"with `hepml-kit data verify {args.out}`")
        return 0
    try:
        shards = ShardSet(args.dir, verify="full")
    except ShardError as e:
        return _fail(str(e), 1)
    print(f"{shards}: every shard matches the manifest and its SHA-256")
    if any("metadata" not in s for s in shards.manifest["shards"]):
        print("note: written before shards carried metadata checksums, so every open hashes each file whole; "
              "regenerate (hepml-kit data generate --overwrite) for fast checked opens")
    return 0

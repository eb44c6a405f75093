"""`hepml-kit data generate|convert|verify`: their arguments (`add_parser`) and what they do (`data_main`).

Write a testbed's Monte Carlo (or a learner's testbed's training items) as sharded HDF5, convert a user's
ROOT/HDF5/Parquet files to checked shards, verify a data set against its manifest. Importing this module does
not import torch or h5py (see `hepml_kit.models.cli` for why); exit status as there: 0 done, 2 bad input,
1 a data set that fails its checks.
"""

from __future__ import annotations

from hepml_kit.models.cli import MODEL_NAMES, cpu_threads, fail, model_choice, quiet_openmp

__all__ = ["add_parser", "data_main"]


def _write_user_items(args) -> int:
    """`hepml-kit data generate file.py:NAME`: a learner's testbed has no generator; its first --events
    training items (in the order --seed draws them, collated as its batches) are written as a table data
    set."""
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
        return fail(str(e), 2)
    print(f"wrote {m['n_events']} items of {tb.name} ({', '.join(m['schema'])}) in "
          f"{len(m['shards'])} shards to {args.out}; read them back with testbed(..., data={args.out!r})")
    return 0


def data_main(args) -> int:
    """`hepml-kit data generate ...`, `hepml-kit data convert INPUT...` and `hepml-kit data verify DIR`."""
    quiet_openmp()
    from hepml_kit.data import ShardError, ShardSet, write_shards

    if args.action == "generate":
        cpu_threads(args.threads)
        if ":" in args.model:
            return _write_user_items(args)
        try:
            m = write_shards(args.model, args.events, args.shards, args.out, seed=args.seed,
                             preset=args.preset, overwrite=args.overwrite,
                             progress=False if args.quiet else None)
        except ValueError as e:
            return fail(str(e), 2)
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
            return fail(str(e), 2)
        size = sum(s["bytes"] for s in m["shards"])
        print(f"wrote {m['n_events']} events ({', '.join(m['schema'])}) from {len(args.inputs)} file(s) in "
              f"{len(m['shards'])} shards, {size / 1e6:.1f} MB, to {args.out}; check "
              f"with `hepml-kit data verify {args.out}`")
        return 0
    try:
        shards = ShardSet(args.dir, verify="full")
    except ShardError as e:
        return fail(str(e), 1)
    print(f"{shards}: every shard matches the manifest and its SHA-256")
    if any("metadata" not in s for s in shards.manifest["shards"]):
        print("note: written before shards carried metadata checksums, so every open hashes each file whole; "
              "regenerate (hepml-kit data generate --overwrite) for fast checked opens")
    return 0


def add_parser(sub) -> None:
    """Register `data` (with its actions generate, convert, verify) on the `hepml-kit` subparsers `sub`."""
    p = sub.add_parser("data",
                       help="write a testbed's Monte Carlo or convert your files as sharded HDF5; verify")
    data = p.add_subparsers(dest="action", required=True)

    g = data.add_parser("generate", help="generate events and write them as K HDF5 shards plus manifest.json")
    g.add_argument("model", type=model_choice,
                   help=f"the testbed model ({', '.join(MODEL_NAMES)}) or your own as path/to/file.py:NAME "
                        "(its training items are written as a table)")
    g.add_argument("--events", type=int, required=True, help="number of events (N)")
    g.add_argument("--shards", type=int, required=True, help="number of shard files (K)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo")
    g.add_argument("--preset", default="tiny", choices=["tiny", "small", "full"],
                   help="config preset of the model")
    g.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default min(2, cores))")
    g.set_defaults(func=data_main)

    c = data.add_parser("convert",
                        help="convert your ROOT (TTree/RNTuple), HDF5 or Parquet files to checked shards")
    c.add_argument("inputs", nargs="+", metavar="INPUT", help="input files (.root, .h5/.hdf5, .parquet)")
    c.add_argument("--tree", default=None,
                   help="ROOT: the tree's name (default: the file's only tree); HDF5: the group")
    c.add_argument("--branches", default=None, help="comma-separated branches/columns to keep (default: all)")
    c.add_argument("--cut", default=None,
                   help="keep events where this Python expression over branches is true")
    c.add_argument("--shards", type=int, required=True, help="number of shard files (K)")
    c.add_argument("--out", required=True, help="output folder (written only once every input has been read)")
    c.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    c.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    c.set_defaults(func=data_main)

    v = data.add_parser("verify", help="check every shard against the manifest, SHA-256 included")
    v.add_argument("dir", help="the data set folder (holding manifest.json)")
    v.set_defaults(func=data_main)

"""`hepml-kit` command line: parse arguments, call the modules that do the work, nothing else.

Each area registers its subcommands in its own `_add_<area>(sub)` function below; `main` calls them all.
"""

from __future__ import annotations

import argparse
import sys


def _add_core(sub) -> None:
    p = sub.add_parser("doctor", help="what this machine offers: Python, torch, devices, backends, site, optional parts")
    p.set_defaults(func=lambda a: __import__("hepml_kit.site", fromlist=["doctor"]).doctor())

    p = sub.add_parser(
        "launch",
        help="run a script on N ranks: torchrun locally, srun mapping under a Slurm allocation",
        description="Run SCRIPT on N ranks with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set. "
        "Locally this is torchrun; inside a Slurm allocation (srun) the SLURM_* variables are mapped.",
    )
    p.add_argument("--nprocs", "--nproc-per-node", type=int, default=1, dest="nprocs", help="ranks per node")
    p.add_argument("--nnodes", type=int, default=1, help="number of nodes (torchrun c10d rendezvous)")
    p.add_argument("--node-rank", type=int, default=None, help="this node's rank (multi-node without Slurm)")
    p.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the c10d rendezvous (multi-node)")
    p.add_argument("--rdzv-id", default="hepml-kit", help="rendezvous id shared by all nodes")
    p.add_argument("script", help="Python script to run on every rank")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=lambda a: __import__("hepml_kit.launch.script", fromlist=["main"]).main(a))


def _add_teach(sub) -> None:
    p = sub.add_parser("exercises", help="generate exercises/ from solutions/, check they are in sync, strip outputs")
    p.add_argument("action", choices=["build", "strip"], help="build: write exercises/; strip: clear notebook outputs")
    p.add_argument("--check", action="store_true", help="only check exercises/ is in sync and notebooks have no outputs")
    p.set_defaults(func=lambda a: __import__("hepml_kit.teach.exercises", fromlist=["x"]).run_cli(a.action, a.check))

    p = sub.add_parser("curriculum", help="run the lessons headless with papermill and write build/summary.md")
    p.add_argument("action", choices=["run"])
    p.add_argument("--scale", default="tiny", choices=["tiny", "small", "full"])
    p.add_argument("--out", default="build", help="folder for executed notebooks and summary.md")
    p.add_argument("--folder", default="curriculum", help="folder of lesson notebooks")
    p.add_argument("--only", nargs="*", help="lesson prefixes to run, e.g. 00 02")
    p.add_argument("--timeout", type=float, default=600.0, help="per-cell execution timeout (s)")
    p.set_defaults(func=lambda a: __import__("hepml_kit.teach.curriculum_run", fromlist=["x"]).main(a))


# Area registrations (each area adds one function above and one line here).
_AREAS = [_add_core, _add_teach]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepml-kit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _AREAS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

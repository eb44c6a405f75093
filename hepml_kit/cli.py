"""`hepml-kit` command line: parse arguments, call the modules that do the work, nothing else.

The core commands (`doctor`, `launch`) are registered here; every other area registers its own beside the
code it calls, in ``hepml_kit/<area>/cli.py`` with an ``add_parser(sub)`` (listed in `_AREAS`). Building the
parser imports no torch, so each command can set ``OMP_WAIT_POLICY`` before torch loads.
"""

from __future__ import annotations

import argparse
import sys

from hepml_kit.batch import cli as batch_cli
from hepml_kit.data import cli as data_cli
from hepml_kit.models import cli as models_cli
from hepml_kit.teach import cli as teach_cli


def _doctor(args) -> int:
    from hepml_kit.site import doctor

    return doctor()


def _launch(args) -> int:
    from hepml_kit.launch.script import main

    return main(args)


def _add_core(sub) -> None:
    """Register `doctor` and `launch` on the `hepml-kit` subparsers `sub`."""
    p = sub.add_parser(
        "doctor", help="what this machine offers: Python, torch, devices, backends, site, optional parts")
    p.set_defaults(func=_doctor)

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
    p.add_argument("--max-restarts", type=int, default=0,
                   help="torchrun: restart every rank this many times after one fails "
                        "(resume from a checkpoint)")
    p.add_argument("script", help="Python script to run on every rank")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=_launch)


# Each area's `add_parser(sub)`, in the order `hepml-kit --help` lists their commands.
_AREAS = [_add_core, teach_cli.add_parser, batch_cli.add_parser, models_cli.add_parser,
         data_cli.add_parser]


class _ShowDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the help already says it or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        absent = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if not action.option_strings or "default" in text or absent:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every subcommand's --help shows each option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(prog="hepml-kit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('hepml-kit')}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in _AREAS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

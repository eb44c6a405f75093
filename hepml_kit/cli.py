"""`hepml-kit` command line: parse arguments, call the modules that do the work, nothing else.

Each area registers its subcommands in its own `_add_<area>(sub)` function below; `main` calls them all.
"""

from __future__ import annotations

import argparse
import sys


def _add_core(sub) -> None:
    p = sub.add_parser("doctor",
                       help="what this machine offers: Python, torch, devices, "
                            "backends, site, optional parts")
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
    p.add_argument("--max-restarts", type=int, default=0,
                   help="torchrun: restart every rank this many times after one fails "
                        "(resume from a checkpoint)")
    p.add_argument("script", help="Python script to run on every rank")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    p.set_defaults(func=lambda a: __import__("hepml_kit.launch.script", fromlist=["main"]).main(a))


def _add_teach(sub) -> None:
    p = sub.add_parser("exercises",
                       help="generate exercises/ from solutions/, check they are in sync, strip outputs")
    p.add_argument("action", choices=["build", "strip"],
                   help="build: write exercises/; strip: clear notebook outputs")
    p.add_argument("--check", action="store_true",
                   help="only check exercises/ is in sync and notebooks have no outputs")
    p.set_defaults(func=lambda a: __import__("hepml_kit.teach.exercises",
                                             fromlist=["x"]).run_cli(a.action, a.check))

    p = sub.add_parser("curriculum",
                       help="run the lessons headless with papermill and write build/summary.md")
    p.add_argument("action", choices=["run"])
    p.add_argument("--scale", default="tiny", choices=["tiny", "small", "full"], help="lesson scale")
    p.add_argument("--out", default="build", help="folder for executed notebooks and summary.md")
    p.add_argument("--folder", default="curriculum", help="folder of lesson notebooks")
    p.add_argument("--only", nargs="*", help="lesson prefixes to run, e.g. 00 02")
    p.add_argument("--timeout", type=float, default=600.0, help="per-cell execution timeout (s)")
    p.set_defaults(func=lambda a: __import__("hepml_kit.teach.curriculum_run", fromlist=["x"]).main(a))


def _add_batch(sub) -> None:
    p = sub.add_parser(
        "batch",
        help="run a notebook as a papermill batch job on Slurm; `batch status JOB`, `batch collect JOB`",
        description="hepml-kit batch NOTEBOOK -p NAME VALUE ... --nodes N "
                    "--gpus-per-node G --time T " "[--account A --qos Q --constraint gpu] [--dry-run];  "
                                                  "hepml-kit batch status JOB;  "
        "hepml-kit batch collect JOB",
    )
    p.add_argument("notebook", help="the notebook to run, or 'status' / 'collect'")
    p.add_argument("job", nargs="?", help="job id (for status/collect)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", dest="parameters",
                   metavar=("NAME", "VALUE"),
                   help="a parameter, typed like papermill -p (int, float, True/False/None, else string)")
    p.add_argument("-r", "--raw", nargs=2, action="append", dest="raw_parameters", metavar=("NAME", "VALUE"),
                   help="a parameter kept as a string")
    p.add_argument("--nodes", type=int, default=1, help="nodes for the job")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (4 on Perlmutter and Polaris)")
    p.add_argument("--ntasks-per-node", type=int, default=1, help="tasks (ranks) per node")
    p.add_argument("--time", default="00:30:00", help="wall time, e.g. 00:30:00")
    p.add_argument("--account", help="allocation to charge (Slurm -A / PBS -A)")
    p.add_argument("--qos", help="Slurm QOS, e.g. debug or regular")
    p.add_argument("--constraint", help="e.g. gpu on Perlmutter")
    p.add_argument("--site", default="perlmutter", choices=["perlmutter", "slurm", "polaris", "pbs"],
                   help="perlmutter/slurm: an sbatch script; polaris/pbs: a PBS Pro script "
                        "(qsub) (default: %(default)s)")
    p.add_argument("--queue", help="PBS queue (-q), e.g. debug or prod on Polaris")
    p.add_argument("--filesystems", default="home:eagle", help="PBS -l filesystems= (default: %(default)s)")
    env = p.add_mutually_exclusive_group()
    env.add_argument("--conda-env", help="conda environment (path or name) to activate")
    env.add_argument("--module", help="module to load (e.g. pytorch/2.6.0)")
    env.add_argument("--venv", help="virtual environment to activate")
    env.add_argument("--image", help="container image (podman-hpc or shifter)")
    p.add_argument("--container", default="podman-hpc", choices=["podman-hpc", "shifter"],
                   help="container runtime for --image")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name for papermill -k")
    p.add_argument("--execution-timeout", type=int, default=3600, help="per-cell timeout (s) for papermill")
    p.add_argument("--out", help="folder for job outputs (default ./hepml-jobs)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting it")
    p.add_argument("--to", help="collect: copy the executed notebook and summary here")
    p.add_argument("--wait", action="store_true", help="collect: wait for the job to finish")
    p.set_defaults(func=lambda a: __import__("hepml_kit.batch.sbatch", fromlist=["cli"]).cli(a))

    p = sub.add_parser("kernel", help="install a Jupyter kernelspec for the kit (NERSC JupyterHub)")
    p.add_argument("action", choices=["install"])
    p.add_argument("--name", default="hepml-kit", help="kernel name (papermill -k NAME)")
    p.add_argument("--display-name", help="name shown in JupyterLab's launcher")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--conda-env", help="conda environment whose python runs the kernel")
    src.add_argument("--image", help="container image run with podman-hpc or shifter")
    p.add_argument("--container", default="podman-hpc", choices=["podman-hpc", "shifter"],
                   help="container runtime for --image")
    p.add_argument("--prefix",
                   help="install under PREFIX/share/jupyter (e.g. a venv) instead of the user folder")
    p.set_defaults(func=lambda a: __import__("hepml_kit.batch.kernel", fromlist=["cli"]).cli(a))


def _add_models(sub) -> None:
    from hepml_kit.testbeds_cli import (  # torch-free: the parser stays fast
        MODEL_NAMES,
        model_choice,
        model_name,
    )

    run = lambda name: (lambda a: getattr(__import__("hepml_kit.testbeds_cli", fromlist=["x"]), name)(a))  # noqa: E731
    p = sub.add_parser("models", help="list the testbed models and presets: parameters, FLOPs per sample")
    p.add_argument("model", nargs="*", type=model_name, metavar="MODEL",
                   help=f"only these models ({', '.join(MODEL_NAMES)}, or your own as path/to/file.py:NAME)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.set_defaults(func=run("models_main"))

    p = sub.add_parser(
        "validate", help="train a testbed preset from fresh Monte Carlo and check its physics threshold",
        description="Generate fresh events with --seed (evaluation events with seed + 1), train the preset, "
        "print the physics metrics, and end with one line 'RESULT name=value ... threshold_met=1|0'. "
        "Exit status 0 whenever it ran (threshold_met carries the verdict; with --strict a missed "
        "threshold exits 3), 2 for bad arguments, 1 on errors. Names with '-' instead of '_' are accepted.",
    )
    p.add_argument("model", type=model_choice,
                   help=f"the testbed model ({', '.join(MODEL_NAMES)}) or your own " "as "
                                                                                     "path/to/file.py:NAME "
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
    p.set_defaults(func=run("validate_main"))

    p = sub.add_parser("data",
                       help="write a testbed's Monte Carlo or convert your files as sharded HDF5; verify")
    data = p.add_subparsers(dest="action", required=True)
    g = data.add_parser("generate", help="generate events and write them as K HDF5 shards plus manifest.json")
    g.add_argument("model", type=model_choice,
                   help=f"the testbed model ({', '.join(MODEL_NAMES)}) or your own " "as "
                                                                                     "path/to/file.py:NAME "
                                                                                     "(its training "
                                                                                     "items are written as a "
                                                                                     "table)")
    g.add_argument("--events", type=int, required=True, help="number of events (N)")
    g.add_argument("--shards", type=int, required=True, help="number of shard files (K)")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo")
    g.add_argument("--preset", default="tiny", choices=["tiny", "small", "full"],
                   help="config preset of the model")
    g.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default min(2, cores))")
    g.set_defaults(func=run("data_main"))
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
    c.set_defaults(func=run("data_main"))
    v = data.add_parser("verify", help="check every shard against the manifest, SHA-256 included")
    v.add_argument("dir", help="the data set folder (holding manifest.json)")
    v.set_defaults(func=run("data_main"))


# Area registrations (each area adds one function above and one line here).
_AREAS = [_add_core, _add_teach, _add_batch, _add_models]


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

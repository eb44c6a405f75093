"""`hepml-kit batch` and `hepml-kit kernel install`: their arguments (`add_parser`); what they do is
`hepml_kit.batch.sbatch.cli` (a notebook as a Slurm or PBS Pro job, its status, its results) and
`hepml_kit.batch.kernel.cli` (a Jupyter kernelspec for NERSC's JupyterHub)."""

from __future__ import annotations

from hepml_kit.batch import kernel, sbatch

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    """Register `batch` and `kernel` on the `hepml-kit` subparsers `sub`."""
    p = sub.add_parser(
        "batch",
        help="run a notebook as a papermill batch job on Slurm; `batch status JOB`, `batch collect JOB`",
        description="hepml-kit batch NOTEBOOK -p NAME VALUE ... --nodes N --gpus-per-node G --time T "
                    "[--account A --qos Q --constraint gpu] [--dry-run];  hepml-kit batch status JOB;  "
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
                   help="perlmutter/slurm: an sbatch script; polaris/pbs: a PBS Pro script (qsub) "
                        "(default: %(default)s)")
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
    p.set_defaults(func=sbatch.cli)

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
    p.set_defaults(func=kernel.cli)

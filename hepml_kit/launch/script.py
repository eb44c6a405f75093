"""`hepml-kit launch --nprocs N script.py [args]`: the batch path for the same training code.

- On a plain machine this is torchrun (`--standalone` for one node, a c10d rendezvous for several).
- Inside a Slurm step (``srun ... hepml-kit launch script.py``) each task maps SLURM_PROCID, SLURM_LOCALID,
  SLURM_NTASKS and the first node of the allocation to RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR (the
  NERSC recipe) and runs the script; inside an allocation but outside a step it calls srun for you.
- Inside a PBS job (ALCF Polaris), as ``mpiexec -n 8 --ppn 4 hepml-kit launch script.py``, each rank maps
  PMI_RANK/PALS_RANKID, PALS_LOCAL_RANKID, PMI_SIZE and the first host of $PBS_NODEFILE the same way; in the
  job's shell outside mpiexec it calls ``mpiexec -n N --ppn P --depth D --cpu-bind depth`` for you.

The script initialises the process group itself, as under torchrun: ``dist.init_process_group(backend)``
(env://), or ``hepml_kit.launch.script.init_from_env()`` which also picks nccl/gloo and the GPU.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys

from hepml_kit.launch.rendezvous import from_pbs, from_slurm, in_mpiexec_rank, init_process_group, rank_env

__all__ = ["init_from_env", "main", "mpiexec_command", "srun_command", "torchrun_command"]


def init_from_env(timeout_s: float = 300.0) -> str:
    """Initialise torch.distributed from torchrun's or Slurm's variables; returns the backend."""
    return init_process_group(rank_env(), timeout_s=timeout_s)


def torchrun_command(script: str, args: list[str], nprocs: int, nnodes: int = 1, node_rank: int | None = None,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "hepml-kit") -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nprocs}"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise ValueError("several nodes need --rdzv-endpoint HOST:PORT (the same on every node)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                f"--rdzv-id={rdzv_id}"]
        if node_rank is not None:
            cmd.append(f"--node-rank={node_rank}")
    return cmd + [script, *args]


def srun_command(script: str, args: list[str], nprocs: int, nnodes: int | None = None) -> list[str]:
    nodes = nnodes or int(os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", "1")))
    return ["srun", f"--nodes={nodes}", f"--ntasks-per-node={nprocs}", f"--ntasks={nodes * nprocs}",
            sys.executable, "-m", "hepml_kit.cli", "launch", f"--nprocs={nprocs}", script, *args]


def mpiexec_command(script: str, args: list[str], nprocs: int, nnodes: int | None = None,
                    cpus_per_node: int = 32) -> list[str]:
    """Cray PALS mpiexec (ALCF's recipe): --ppn ranks per node, --depth cores per rank, bound by depth."""
    if nnodes is None:
        with open(os.environ["PBS_NODEFILE"]) as f:
            nnodes = len({h.strip() for h in f if h.strip()})
    depth = max(1, cpus_per_node // nprocs)
    return ["mpiexec", "-n", str(nnodes * nprocs), "--ppn", str(nprocs), "--depth", str(depth),
            "--cpu-bind", "depth", sys.executable, "-m", "hepml_kit.cli", "launch",
            f"--nprocs={nprocs}", script, *args]


def _run_script_as_rank(script: str, args: list[str], pbs: bool = False) -> int:
    info = from_pbs() if pbs else from_slurm()
    os.environ.update(info.env())
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


def main(a) -> int:
    if a.nprocs < 1:
        print(f"hepml-kit launch: --nprocs must be >= 1, got {a.nprocs}", file=sys.stderr)
        return 2
    if not os.path.isfile(a.script):
        print(f"hepml-kit launch: no such script: {a.script}", file=sys.stderr)
        return 2
    args = [x for x in a.args if x != "--"] if a.args[:1] == ["--"] else list(a.args)
    if "SLURM_PROCID" in os.environ and "SLURM_STEP_ID" in os.environ:
        return _run_script_as_rank(a.script, args)  # we are one srun task
    if "PBS_JOBID" in os.environ and in_mpiexec_rank():
        return _run_script_as_rank(a.script, args, pbs=True)  # we are one mpiexec rank in a PBS job
    if "PBS_JOBID" in os.environ and os.environ.get("PBS_NODEFILE") and shutil.which("mpiexec") \
            and a.rdzv_endpoint is None:
        cmd = mpiexec_command(a.script, args, a.nprocs, a.nnodes if a.nnodes > 1 else None)
        print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
        return subprocess.call(cmd)
    if "SLURM_JOB_ID" in os.environ and shutil.which("srun") and a.rdzv_endpoint is None:
        cmd = srun_command(a.script, args, a.nprocs, a.nnodes if a.nnodes > 1 else None)
    else:
        cmd = torchrun_command(a.script, args, a.nprocs, a.nnodes, a.node_rank, a.rdzv_endpoint, a.rdzv_id)
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd)

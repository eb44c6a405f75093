"""`hepml-kit batch NOTEBOOK --site polaris`: the same papermill job as a PBS Pro script (ALCF Polaris).

Directives follow ALCF's "Running Jobs on Polaris" page: ``-l select=N:system=polaris``, ``-l place=scatter``,
``-l walltime=HH:MM:SS``, ``-l filesystems=home:eagle``, ``-q QUEUE``, ``-A PROJECT``. Every directive value
is checked against a strict pattern (`hepml_kit.batch.quoting`); the shell part is the Slurm one
(`sbatch.script_body`), so parameter values stay data. Before papermill, ``mpiexec`` (Cray PALS) starts one
process per node to log the nodes the job got, the check that PALS and the node file work.
Submit with ``qsub``, watch with ``qstat -x`` (finished jobs too).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from hepml_kit.batch.job_script import directive_path, script_body
from hepml_kit.batch.quoting import BatchError, job_name_from

__all__ = ["qstat_state", "qsub", "render_pbs"]

# PBS Pro job states (qstat -x): Q queued, H held, W waiting, R running, E exiting, B array begun, F finished
PBS_STATES = {"Q": "PENDING", "H": "PENDING", "W": "PENDING", "T": "PENDING", "R": "RUNNING", "B": "RUNNING",
              "E": "COMPLETING", "X": "COMPLETED", "F": "COMPLETED", "C": "COMPLETED", "S": "SUSPENDED"}


def render_pbs(job, job_dir: Path) -> str:
    """The PBS Pro script for `job` (a validated `BatchJob` with ``site="polaris"``)."""
    nb = Path(job.notebook).resolve()
    name = job.job_name or job_name_from(nb.stem)
    out = directive_path("-o", job_dir)
    select = f"select={job.nodes}:system=polaris" if job.site == "polaris" else f"select={job.nodes}"
    if job.gpus_per_node and job.site != "polaris":
        select += f":ngpus={job.gpus_per_node}"
    pbs = [f"-N {name}", f"-l {select}", "-l place=scatter", f"-l walltime={_walltime(job.time)}",
           f"-l filesystems={job.filesystems}", "-j oe", f"-o {out}/pbs.out"]
    if job.queue:
        pbs.append(f"-q {job.queue}")
    if job.account:
        pbs.append(f"-A {job.account}")
    preflight = ('NNODES=$(sort -u "${PBS_NODEFILE:-/dev/null}" | wc -l)',
                 'echo "nodes: $NNODES"; [ "$NNODES" -gt 0 ] && mpiexec -n "$NNODES" --ppn 1 hostname')
    return "\n".join(["#!/bin/bash", *[f"#PBS {x}" for x in pbs], "",
                      *script_body(job, job_dir, "PBS_JOBID", before_papermill=preflight)])


def _walltime(t: str) -> str:
    """Slurm-style MM, MM:SS or HH:MM:SS as PBS HH:MM:SS."""
    parts = [int(x) for x in t.split(":")]
    seconds = {1: lambda p: p[0] * 60, 2: lambda p: p[0] * 60 + p[1],
               3: lambda p: p[0] * 3600 + p[1] * 60 + p[2]}
    s = seconds[len(parts)](parts)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def qsub(script_path: Path) -> str:
    """Submit with qsub; returns the job id (``1234.polaris-pbs-01...``)."""
    if not shutil.which("qsub"):
        raise BatchError("qsub is not on PATH: run on a PBS login node (or use --dry-run to see the script)")
    # from the job folder: Torque-style wrappers put their default job.pbs.oNNN logs in the current folder
    out = subprocess.run(["qsub", str(script_path)], capture_output=True, text=True, timeout=60,
                         cwd=script_path.parent)
    if out.returncode != 0 or not out.stdout.strip():
        raise BatchError(f"qsub refused the job: {out.stderr.strip() or out.stdout.strip()} (script: "
                         f"{script_path})")
    return out.stdout.strip().splitlines()[-1].strip()


def qstat_state(job_id: str) -> str | None:
    """The job's state from ``qstat -x -f -F json`` (PBS Pro), else the state column of ``qstat -x`` or
    plain ``qstat`` (Torque-style wrappers); None when qstat is missing or does not know the job."""
    if not shutil.which("qstat"):
        return None
    out = subprocess.run(["qstat", "-x", "-f", "-F", "json", job_id], capture_output=True,
                         text=True, timeout=30)
    if out.returncode == 0 and out.stdout.lstrip().startswith("{"):
        jobs = json.loads(out.stdout).get("Jobs", {})
        for info in jobs.values():
            code = info.get("job_state")
            if code == "F" and int(info.get("Exit_status", 0)) != 0:
                return "FAILED"
            return PBS_STATES.get(code, code)
    out = subprocess.run(["qstat", "-x", job_id], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:  # Torque-style qstat (e.g. Slurm's qsub/qstat wrappers) has no -x
        out = subprocess.run(["qstat", job_id], capture_output=True, text=True, timeout=30)
    for line in out.stdout.splitlines():
        cols = line.split()
        if cols and cols[0].split(".")[0] == job_id.split(".")[0] and len(cols) >= 5:
            code = next((c for c in cols[-2:] if re.fullmatch(r"[A-Z]", c)), None)
            return PBS_STATES.get(code, code) if code else None
    return None

"""The shell part every batch script shares, Slurm's (`sbatch.py`) and PBS Pro's (`pbs.py`): activate the
environment, write the parameters in a quoted here-document, run papermill, leave a summary.json.

Both renderers import this module; it imports neither of them (a `BatchJob` is only passed in).
"""

from __future__ import annotations

import json
import secrets
import shlex
from pathlib import Path

from hepml_kit.batch.quoting import SAFE_PATH, directive_value, shell_word

__all__ = ["directive_path", "script_body"]


def _activation(job) -> tuple[list[str], list[str]]:
    """Shell lines that activate the environment, and the prefix that runs papermill (for containers).
    Environment paths may use $VARIABLES (``$SCRATCH/envs/kit``): those expand, nothing else does."""
    q = shlex.quote
    if job.conda_env:
        load = "module load conda 2>/dev/null || true" if job.scheduler == "slurm" else \
            "module use /soft/modulefiles 2>/dev/null; module load conda 2>/dev/null || true"
        return [load, f"conda activate {shell_word(job.conda_env, expand_variables=True)}"], []
    if job.module:
        return [f"module load {shell_word(job.module, expand_variables=True)}"], []
    if job.venv:
        return [f"source {shell_word(str(Path(job.venv) / 'bin' / 'activate'), expand_variables=True)}"], []
    if job.image:
        if job.container == "shifter":
            return [], ["shifter", q(f"--image={job.image}")]
        gpu = ["--gpu"] if job.gpus_per_node else []
        return [], ["podman-hpc", "run", "--rm", *gpu, "-v", '"$PWD":"$PWD"', "-v", '"$JOBDIR":"$JOBDIR"',
                    "-w", '"$PWD"', q(job.image)]
    return [], []


def script_body(job, job_dir: Path, job_id: str, before_papermill: tuple[str, ...] = ()) -> list[str]:
    """The shell part shared by the Slurm and PBS scripts (`job_id`: the scheduler's variable, e.g.
    ``SLURM_JOB_ID``)."""
    q = shlex.quote
    nb = Path(job.notebook).resolve()
    params = json.dumps(job.parameters, indent=1, ensure_ascii=True)  # one value per line, no raw newlines
    delimiter = f"HEPML_PARAMETERS_{secrets.token_hex(6)}"
    activate, prefix = _activation(job)
    executed = job_dir / f"{nb.stem}.executed.ipynb"
    papermill = [*prefix, "papermill", "-k", q(job.kernel), "--cwd", q(str(nb.parent)), "--log-output",
                 "--execution-timeout", str(int(job.execution_timeout)), "-f", '"$JOBDIR/parameters.yaml"',
                 q(str(nb)), q(str(executed))]
    return ["# rendered by `hepml-kit batch`; parameters travel in a quoted "
            "here-document, never as shell code",
            "set -uo pipefail", f"JOBDIR={q(str(job_dir))}", 'mkdir -p "$JOBDIR"',
            "export IPP_NONINTERACTIVE=1", "export MPLBACKEND=Agg", *activate,
            f"cat > \"$JOBDIR/parameters.yaml\" <<'{delimiter}'", params, delimiter,
            f'echo "job ${{{job_id}:-local}} on $(hostname) started $(date -Is)"', *before_papermill,
            " ".join(papermill),
            "status=$?",
            ('printf \'{"job_id": "%s", "exit_code": %d, "finished": "%s", "executed": "%s"}\\n\' '
             f'"${{{job_id}:-local}}" "$status" "$(date -Is)" {q(str(executed))} > "$JOBDIR/summary.json"'),
            'exit "$status"', ""]


def directive_path(option: str, path: Path) -> str:
    return directive_value(f"--out (the job folder, written into {option})", str(path), SAFE_PATH)

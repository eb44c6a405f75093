"""`hepml-kit batch`: run a lesson (any parameterised notebook) as a papermill batch job on Slurm (or, with
``--site polaris``, on PBS Pro: `hepml_kit.batch.pbs`).

The rendered sbatch script activates the environment (conda env, module, venv or container image), sets
``IPP_NONINTERACTIVE=1`` and runs ``papermill -k KERNEL --cwd ... --log-output --execution-timeout ...``.
Parameter values never appear in shell code: they are written as JSON (valid YAML) inside a *quoted*
here-document, which the shell does not expand, and reach papermill through ``-f``; every path is quoted
with `shlex.quote`. So a value such as ``"; rm -rf ~; echo "`` arrives in the notebook exactly as typed.
Directive values (account, QOS, constraint, job name, output folder) and container images must match strict
patterns (`hepml_kit.batch.quoting`); ``$SCRATCH`` in an environment path expands, nothing else does. The
values are checked against the lesson's own validation cell before anything is queued (`lesson_params`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hepml_kit.batch.job_script import directive_path, script_body
from hepml_kit.batch.lesson_params import check_parameters, declared_parameters
from hepml_kit.batch.quoting import (
    ACCOUNT,
    CONSTRAINT,
    IMAGE,
    JOB_NAME,
    BatchError,
    check_text,
    directive_value,
    job_name_from,
)

__all__ = [
    "BatchError",
    "BatchJob",
    "collect",
    "job_status",
    "notebook_parameters",
    "parse_value",
    "render_sbatch",
    "submit",
]

JOBS_INDEX = Path(os.environ.get("HEPML_KIT_JOBS", Path.home() / ".hepml-kit" / "jobs"))
_TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCHEDULERS = {"perlmutter": "slurm", "slurm": "slurm", "polaris": "pbs", "pbs": "pbs"}


@dataclass
class BatchJob:
    notebook: str
    parameters: dict = field(default_factory=dict)
    nodes: int = 1
    gpus_per_node: int = 0
    ntasks_per_node: int = 1
    time: str = "00:30:00"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    conda_env: str | None = None
    module: str | None = None
    venv: str | None = None
    image: str | None = None
    container: str = "podman-hpc"  # or "shifter"
    kernel: str = "python3"
    execution_timeout: int = 3600
    out_dir: str | None = None
    job_name: str | None = None
    site: str = "perlmutter"  # "perlmutter"/"slurm" (sbatch) or "polaris"/"pbs" (qsub)
    queue: str | None = None  # PBS -q (Polaris: debug, prod, preemptable, ...)
    filesystems: str = "home:eagle"  # PBS -l filesystems= (Polaris)

    @property
    def scheduler(self) -> str:
        return SCHEDULERS[self.site]

    def _strings(self) -> Iterator[tuple[str, str]]:
        for opt in ("notebook", "time", "account", "qos", "constraint", "conda_env",
                    "module", "venv", "image", "kernel", "out_dir", "job_name", "queue", "filesystems"):
            if getattr(self, opt) is not None:
                yield "--" + opt.replace("_", "-").replace("out-dir", "out"), str(getattr(self, opt))
        for name, value in self.parameters.items():
            yield "-p", str(name)
            if isinstance(value, str):
                yield f"-p {name}", value

    def validate(self, check_values: bool = True) -> None:
        if self.site not in SCHEDULERS:
            raise BatchError(f"--site {self.site!r}: choose one of {', '.join(SCHEDULERS)}")
        for option, value in self._strings():
            if option.startswith("-p "):  # values may hold newlines (they travel as JSON), but must be text
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise BatchError(f"{option} {value!r} is not valid UTF-8 text") from None
            else:
                check_text(option, value)
        for name in self.parameters:
            if not _NAME.match(name):
                raise BatchError(f"parameter name {name!r} is not a Python identifier")
        if self.nodes < 1 or self.gpus_per_node < 0 or self.ntasks_per_node < 1:
            raise BatchError("need --nodes >= 1, --gpus-per-node >= 0 and --ntasks-per-node >= 1")
        if not _TIME.match(self.time):
            raise BatchError(f"--time {self.time!r} is not a Slurm time (e.g. 00:30:00 or 1-00:00:00)")
        if self.scheduler == "pbs" and "-" in self.time:
            raise BatchError(f"--time {self.time!r}: PBS walltime has no days, write "
                             "HH:MM:SS (e.g. 24:00:00)")
        for option, value in (("--account", self.account), ("--qos", self.qos), ("--queue", self.queue)):
            if value is not None:
                directive_value(option, value, ACCOUNT)
        if self.constraint is not None:
            directive_value("--constraint", self.constraint, CONSTRAINT)
        if self.job_name is not None:
            directive_value("--job-name", self.job_name, JOB_NAME)
        if self.scheduler == "pbs":
            directive_value("--filesystems", self.filesystems, CONSTRAINT)
        if self.image is not None:
            directive_value("--image", self.image, IMAGE)
        if self.module is not None and self.module.startswith("-"):
            raise BatchError(f"--module {self.module!r} must name a module, not an option")
        if sum(x is not None for x in (self.conda_env, self.module, self.venv, self.image)) > 1:
            raise BatchError("choose at most one of --conda-env, --module, --venv, --image")
        if self.container not in ("podman-hpc", "shifter"):
            raise BatchError(f"--container must be podman-hpc or shifter, got {self.container!r}")
        if self.execution_timeout <= 0:
            raise BatchError("--execution-timeout must be positive (seconds)")
        nb = Path(self.notebook)
        if not nb.is_file():
            raise BatchError(f"no such notebook: {self.notebook}")
        if check_values:
            check_parameters(nb, self.parameters)


def parse_value(text: str):
    """papermill's `-p` typing: True/False/None, int, float, else the string itself."""
    from papermill.cli import _resolve_type

    return _resolve_type(text)


def notebook_parameters(nb: Path) -> list[str]:
    return declared_parameters(nb)


def render_sbatch(job: BatchJob, job_dir: Path) -> str:
    """The sbatch script for `job`, writing its outputs under `job_dir`."""
    job.validate()
    if job.scheduler != "slurm":
        from hepml_kit.batch.pbs import render_pbs

        return render_pbs(job, job_dir)
    nb = Path(job.notebook).resolve()
    name = job.job_name or job_name_from(nb.stem)
    sb = [f"--job-name={name}", f"--nodes={job.nodes}", f"--ntasks-per-node={job.ntasks_per_node}",
          f"--time={job.time}", f"--output={directive_path('--output', job_dir)}/slurm-%j.out"]
    if job.gpus_per_node:
        sb += [f"--gpus-per-node={job.gpus_per_node}"]
    sb += [f"--{k}={v}" for k, v in (("account", job.account), ("qos", job.qos),
                                     ("constraint", job.constraint)) if v]
    return "\n".join(["#!/bin/bash", *[f"#SBATCH {x}" for x in sb], "",
                      *script_body(job, job_dir, "SLURM_JOB_ID")])


def _job_dir(job: BatchJob) -> Path:
    base = Path(job.out_dir) if job.out_dir else Path.cwd() / "hepml-jobs"
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", Path(job.notebook).stem)
    return (base / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}").resolve()


def submit(job: BatchJob, dry_run: bool = False) -> tuple[str | None, Path, str]:
    """Render and submit with sbatch; returns (job id or None for a dry run, job folder, script)."""
    job.validate()
    job_dir = _job_dir(job)
    script = render_sbatch(job, job_dir)
    if dry_run:
        return None, job_dir, script
    slurm = job.scheduler == "slurm"
    if slurm and not shutil.which("sbatch"):
        raise BatchError("sbatch is not on PATH: run inside a Slurm cluster (or use "
                         "--dry-run to see the script)")
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / ("job.sbatch" if slurm else "job.pbs")
    path.write_text(script)
    if slurm:
        out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise BatchError(f"sbatch refused the job: {out.stderr.strip() or out.stdout.strip()} (script: "
                             f"{path})")
        job_id = out.stdout.strip().split(";")[0]
    else:
        from hepml_kit.batch.pbs import qsub

        job_id = qsub(path)
    record = {"job_id": job_id, "job_dir": str(job_dir), "script": str(path), **asdict(job)}
    (job_dir / "job.json").write_text(json.dumps(record, indent=1))
    JOBS_INDEX.mkdir(parents=True, exist_ok=True)
    (JOBS_INDEX / f"{job_id}.json").write_text(json.dumps(record, indent=1))
    return job_id, job_dir, script


def _record(job_id: str) -> dict:
    path = JOBS_INDEX / f"{job_id}.json"
    if not path.exists():
        raise BatchError(f"no job {job_id} submitted with hepml-kit batch (looked in {JOBS_INDEX})")
    return json.loads(path.read_text())


def _run(cmd: list[str]) -> str:
    if not shutil.which(cmd[0]):
        return ""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _slurm_state(job_id: str) -> str | None:
    """squeue for queued/running jobs, then sacct (finished, timed-out, cancelled: kept by accounting), then
    scontrol (what slurmctld still remembers, about 5 minutes, when accounting is off)."""
    state = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
    if state:
        return state.split()[0]
    rows = [r.split("|") for r in _run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o",
                                        "JobID,State"]).splitlines()]
    state = next((r[1].split()[0] for r in rows if len(r) == 2 and r[0] == job_id and r[1]), None)
    if state:
        return state  # e.g. "CANCELLED by 0" -> CANCELLED
    m = re.search(r"JobState=(\w+)", _run(["scontrol", "show", "job", job_id]))
    return m.group(1) if m else None


def job_status(job_id: str) -> dict:
    """{'state': PENDING/RUNNING/COMPLETED/FAILED/..., 'exit_code', 'log', 'executed'} for a submitted job."""
    rec = _record(job_id)
    job_dir = Path(rec["job_dir"])
    slurm = SCHEDULERS[rec.get("site", "slurm")] == "slurm"
    log = job_dir / (f"slurm-{job_id}.out" if slurm else "pbs.out")
    summary = job_dir / "summary.json"
    state = _slurm_state(job_id) if slurm else __import__("hepml_kit.batch.pbs",
                                                          fromlist=["x"]).qstat_state(job_id)
    result = {"job_id": job_id, "state": state, "exit_code": None, "log": str(log), "job_dir": str(job_dir)}
    if summary.exists():
        s = json.loads(summary.read_text())
        result["exit_code"] = s["exit_code"]
        result["executed"] = s["executed"]
        if state in (None, "COMPLETING", "COMPLETED", "FAILED"):
            result["state"] = "COMPLETED" if s["exit_code"] == 0 else "FAILED"
    elif state is None:
        result["state"] = "UNKNOWN (ended without a summary: cancelled, timed out or killed; see the log)"
    return result


def collect(job_id: str, to: Path | None = None, wait: bool = False, timeout: float = 3600.0) -> dict:
    """Fetch a finished job's executed notebook and summary (into `to` when given); raise `BatchError`
    naming the log when the job failed."""
    deadline = time.monotonic() + timeout
    st = job_status(job_id)
    while wait and st["state"] in ("PENDING", "RUNNING", "CONFIGURING",
                                   "COMPLETING") and time.monotonic() < deadline:
        time.sleep(2)
        st = job_status(job_id)
    if st["state"] in ("PENDING", "RUNNING", "CONFIGURING"):
        raise BatchError(f"job {job_id} is still {st['state']}; try again later (log: {st['log']})")
    if st["state"] != "COMPLETED":
        raise BatchError(f"job {job_id} {st['state']}, exit code {st['exit_code']}; log: {st['log']}")
    if to is not None:
        to.mkdir(parents=True, exist_ok=True)
        for src in (Path(st["executed"]), Path(st["job_dir"]) / "summary.json"):
            shutil.copy2(src, to / src.name)
        st["collected_to"] = str(to)
    return st


def cli(a) -> int:
    """`hepml-kit batch ...` (argument parsing lives in hepml_kit.batch.cli)."""
    try:
        if a.notebook in ("status", "collect"):
            if not a.job:
                raise BatchError(f"usage: hepml-kit batch {a.notebook} JOB_ID")
            if a.notebook == "status":
                print(json.dumps(job_status(a.job), indent=1))
                return 0
            st = collect(a.job, Path(a.to) if a.to else None, wait=a.wait)
            print(f"job {a.job} COMPLETED; executed notebook: {st['executed']}"
                  + (f"; copied to {st['collected_to']}" if "collected_to" in st else ""))
            return 0
        params = {name: parse_value(value) for name, value in (a.parameters or [])}
        params.update({name: value for name, value in (a.raw_parameters or [])})
        job = BatchJob(notebook=a.notebook, parameters=params, nodes=a.nodes, gpus_per_node=a.gpus_per_node,
                       ntasks_per_node=a.ntasks_per_node, time=a.time, account=a.account, qos=a.qos,
                       constraint=a.constraint, conda_env=a.conda_env, module=a.module,
                       venv=a.venv, image=a.image, container=a.container, kernel=a.kernel,
                       execution_timeout=a.execution_timeout, out_dir=a.out,
                       site=getattr(a, "site", "perlmutter"), queue=getattr(a, "queue", None),
                       filesystems=getattr(a, "filesystems", "home:eagle"))
        job_id, job_dir, script = submit(job, dry_run=a.dry_run)
        if a.dry_run:
            print(script)
        else:
            print(f"submitted job {job_id}; outputs in {job_dir}; "
                  f"watch: hepml-kit batch status {job_id}; fetch: hepml-kit batch collect {job_id}")
        return 0
    except BatchError as e:
        print(f"hepml-kit batch: {e}", file=__import__("sys").stderr)
        return 2

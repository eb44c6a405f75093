"""Checks for curriculum/10_batch's exercise: a 4-node Perlmutter batch job for lesson 02."""

from __future__ import annotations

from pathlib import Path

from hepml_kit.checks import CheckFailed, passed

__all__ = ["ex10_perlmutter_job", "HINTS"]

HINTS = {
    "ex10_perlmutter_job": "BatchJob(notebook=..., parameters={...}, nodes=..., gpus_per_node=..., time=..., "
    "account=..., constraint=...). One rank per GPU means NPROCS = nodes * gpus_per_node.",
}


def ex10_perlmutter_job(make_job) -> None:
    from hepml_kit.batch import BatchJob, render_sbatch

    job = make_job()
    if not isinstance(job, BatchJob):
        raise CheckFailed(f"return a hepml_kit.batch.BatchJob, got {type(job).__name__}")
    problems = []
    if Path(job.notebook).name != "02_data_parallel.ipynb":
        problems.append(f"the notebook should be 02_data_parallel.ipynb, not {job.notebook}")
    if job.nodes != 4:
        problems.append(f"nodes={job.nodes}, the exercise asks for 4 nodes")
    if job.gpus_per_node != 4:
        problems.append(f"gpus_per_node={job.gpus_per_node}: a Perlmutter GPU node has 4 A100s")
    nprocs = job.parameters.get("NPROCS")
    if nprocs == 4 and job.nodes == 4:
        problems.append("NPROCS=4 uses one node's GPUs only: one rank per GPU over 4 nodes is 16")
    elif nprocs != job.nodes * job.gpus_per_node:
        problems.append(f"NPROCS={nprocs}: one rank per GPU is nodes x gpus_per_node = "
                        f"{job.nodes * job.gpus_per_node}")
    if job.parameters.get("SCALE") != "small":
        problems.append(f"SCALE={job.parameters.get('SCALE')!r}, the exercise asks for 'small'")
    if job.constraint != "gpu":
        problems.append("Perlmutter GPU nodes need constraint='gpu'")
    if job.account != "m0000":
        problems.append(f"account={job.account!r}, the exercise uses m0000")
    if job.time != "00:30:00":
        problems.append(f"time={job.time!r}, the exercise asks for 30 minutes (00:30:00)")
    if problems:
        raise CheckFailed("; ".join(problems))
    lesson_dir = Path(__file__).resolve().parents[2] / "curriculum"
    if (lesson_dir / job.notebook).exists() or Path(job.notebook).exists():
        nb = job.notebook if Path(job.notebook).exists() else str(lesson_dir / job.notebook)
        job = BatchJob(**{**job.__dict__, "notebook": nb})
        script = render_sbatch(job, Path("/tmp/hepml-ex10"))
        assert "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=4" in script
    passed("ex10_perlmutter_job", "4 nodes x 4 GPUs, 16 ranks, lesson 02 at small scale")

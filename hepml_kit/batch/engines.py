"""ipyparallel engines on PBS Pro (ALCF Polaris): what `Workers(engines="pbs")` and, in a PBS job,
`Workers(engines="mpi")` pass to `ipyparallel.Cluster`.

ipyparallel's PBS launcher defaults to a Torque job array (``#PBS -t``), which PBS Pro does not take; here the
engines are ONE PBS Pro job that starts them with Cray PALS ``mpiexec`` (``--ppn``, ``--depth``,
``--cpu-bind depth``: ALCF's recipe), so ranks land one per GPU, ``--ppn`` per node. Every directive value
is checked like `hepml-kit batch`'s (`hepml_kit.batch.quoting`).
"""

from __future__ import annotations

import math

from hepml_kit.batch.quoting import CONSTRAINT, BatchError, directive_value

__all__ = ["engine_cluster_kwargs", "pals_mpi_args", "pbs_engine_template"]


def pals_mpi_args(ppn: int, cpus_per_node: int = 32) -> list[str]:
    """PALS mpiexec flags: `ppn` ranks per node, each bound to cpus_per_node // ppn cores."""
    if ppn < 1:
        raise BatchError(f"ranks per node must be >= 1, got {ppn}")
    return ["--ppn", str(ppn), "--depth", str(max(1, cpus_per_node // ppn)), "--cpu-bind", "depth"]


def pbs_engine_template(n: int, *, ppn: int = 4, walltime: str = "01:00:00", queue: str = "debug",
                        account: str | None = None, filesystems: str = "home:eagle", system: str = "polaris",
                        cpus_per_node: int = 32) -> str:
    """The PBS Pro script for `n` engines (ipyparallel fills in ``{program_and_args}``)."""
    import re

    if not re.fullmatch(r"\d{1,3}:\d{2}:\d{2}", walltime):
        raise BatchError(f"walltime {walltime!r}: write HH:MM:SS")
    nodes = math.ceil(n / ppn)
    lines = ["#!/bin/bash", "#PBS -N hepml-engines",
             f"#PBS -l select={nodes}:system={directive_value('system', system)}",
             "#PBS -l place=scatter", f"#PBS -l walltime={walltime}",
             f"#PBS -l filesystems={directive_value('filesystems', filesystems, CONSTRAINT)}",
             f"#PBS -q {directive_value('queue', queue)}"]
    if account:
        lines.append(f"#PBS -A {directive_value('account', account)}")
    lines += ['cd "${{PBS_O_WORKDIR:-.}}"',  # braces doubled: ipyparallel formats the template
              f"mpiexec -n {n} {' '.join(pals_mpi_args(min(ppn, n), cpus_per_node))} "
              f"{{program_and_args}}", ""]
    return "\n".join(lines)


def engine_cluster_kwargs(kind: str, n: int, **pbs) -> dict:
    """Keyword arguments for `ipyparallel.Cluster`: ``kind="pbs"`` submits the engines as a PBS Pro job
    (`pbs_engine_template`); ``kind="mpi"`` inside a PBS job starts them with PALS mpiexec flags."""
    from traitlets.config import Config

    config = Config()
    ppn = pbs.get("ppn", 4)
    if kind == "pbs":
        config.PBSEngineSetLauncher.batch_template = pbs_engine_template(n, **pbs)
        return {"engines": "pbs", "config": config}
    if kind == "mpi":
        config.MPIEngineSetLauncher.mpi_args = pals_mpi_args(min(ppn, n), pbs.get("cpus_per_node", 32))
        return {"engines": "mpi", "config": config}
    raise BatchError(f"engines {kind!r}: this helper knows 'pbs' and 'mpi'")

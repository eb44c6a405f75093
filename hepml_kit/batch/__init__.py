"""From notebook to supercomputer: papermill batch jobs on Slurm (`sbatch.py`) or PBS Pro
(`pbs.py`), with every value checked or quoted (`quoting.py`) and checked against the lesson's own rules
(`lesson_params.py`), and Jupyter kernelspecs
for NERSC's JupyterHub (`kernel.py`)."""

from hepml_kit.batch.kernel import install_kernel, kernelspec
from hepml_kit.batch.lesson_params import curriculum_dir
from hepml_kit.batch.quoting import BatchError
from hepml_kit.batch.sbatch import BatchJob, collect, job_status, render_sbatch, submit

__all__ = ["BatchError", "BatchJob", "collect", "curriculum_dir", "install_kernel",
           "job_status", "kernelspec", "render_sbatch", "submit"]

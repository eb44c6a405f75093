"""From notebook to supercomputer: papermill batch jobs on Slurm (`sbatch.py`) and Jupyter kernelspecs
for NERSC's JupyterHub (`kernel.py`)."""

from hepml_kit.batch.kernel import install_kernel, kernelspec
from hepml_kit.batch.sbatch import BatchJob, collect, job_status, render_sbatch, submit

__all__ = ["BatchJob", "collect", "install_kernel", "job_status", "kernelspec", "render_sbatch", "submit"]

"""hepml-kit: scale HEP machine learning from one device to many, from a notebook.

Public face only: the launcher (`launch`, `Workers`, `WorkerError`) and the IPython extension hook
(`%load_ext hepml_kit` registers the `%%distributed` cell magic).
"""

from hepml_kit.launch.workers import WorkerError, Workers, launch

__all__ = ["launch", "Workers", "WorkerError", "load_ipython_extension"]
__version__ = "0.1.0"


def load_ipython_extension(ipython):
    """Register `%%distributed` (see `hepml_kit.launch.magic`)."""
    from hepml_kit.launch.magic import load_ipython_extension as _load

    _load(ipython)

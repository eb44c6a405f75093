"""Guard the fork: stop before a fork-based launch when the kernel already holds a CUDA context.

A forked child cannot use its parent's CUDA context; Lightning's ``ddp_notebook`` (and any ``fork`` start
method) then fails inside the ranks with "Cannot re-initialize CUDA in forked subprocess" or hangs, far
from the cell that touched CUDA. `check_no_cuda_before_fork` raises at once instead, naming the cell that
first initialised CUDA when `%load_ext hepml_kit` was loaded before it (`watch_cuda_init`), and the fix.

Taught in curriculum/11_debugging.
"""

from __future__ import annotations

import sys

__all__ = ["CudaBeforeForkError", "check_no_cuda_before_fork", "watch_cuda_init"]

_first_cuda_cell: str | None = None


class CudaBeforeForkError(RuntimeError):
    """CUDA was initialised in this process before a fork-based launch."""


def check_no_cuda_before_fork(launch: str = "a fork-based launch (Lightning's "
                                            "strategy='ddp_notebook')") -> None:
    """Raise `CudaBeforeForkError` if this process has initialised CUDA; a no-op when torch is not even
    imported (importing torch does not initialise CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    cause = _first_cuda_cell or ("an earlier cell (anything that calls torch.cuda.*, .cuda(), .to('cuda') or "
                                 "makes a tensor with device='cuda'; `%load_ext "
                                 "hepml_kit` first names the cell)")
    raise CudaBeforeForkError(
        f"CUDA is already initialised in this kernel, so {launch} cannot fork: the forked ranks would fail "
        f"with 'Cannot re-initialize CUDA in forked subprocess'. CUDA was first initialised by {cause}. "
        "Fix: restart the kernel and keep CUDA out of the notebook until the launch "
        "(build models and tensors on the CPU; move them to the GPU inside the training function), or "
        "launch with spawned processes instead: hepml_kit.Workers / %%distributed, or "
        "Lightning's strategy='ddp_spawn'."
    )


def watch_cuda_init(ipython) -> None:
    """After each cell, note the first one after which CUDA is initialised (for the error's message)."""

    def after_cell(result=None):
        global _first_cuda_cell
        torch = sys.modules.get("torch")
        if _first_cuda_cell is None and torch is not None and torch.cuda.is_initialized():
            count = getattr(result, "execution_count", None) or ipython.execution_count
            source = (getattr(getattr(result, "info", None), "raw_cell", "") or "").strip().splitlines()
            _first_cuda_cell = f"cell In[{count}]" + (f" (starting {source[0][:60]!r})" if source else "")

    ipython.events.register("post_run_cell", after_cell)

"""`%%distributed -n N`: run a notebook cell on N ranks with torch.distributed wired.

    %load_ext hepml_kit
    %%distributed -n 2
    import torch, torch.distributed as dist
    t = torch.ones(1) * dist.get_rank()
    dist.all_reduce(t)
    print(t.item())

Every rank runs the cell body; output appears prefixed ``[rank r]`` in rank order, the same from run to run
(nbval- and papermill-stable). The pool stays warm between cells with the same ``-n``; names the cell
assigns stay on the engines, not in the notebook (return values are for `launch`). Each cell is one
distributed job: the process group is set up at its start and torn down at its end. ``--timeout S`` bounds
the cell; ``--restart`` starts a fresh pool. ``--ranks 1`` (or ``--ranks 0,2``) runs the cell on those
ranks of the warm pool only, without a process group and without disturbing the others: to look at a rank's
names after an error (``%%distributed -n 2 --ranks 1`` then ``print(loss)``).

Taught in curriculum/00_setup.
"""

from __future__ import annotations

import argparse
import shlex

from hepml_kit.launch.workers import Workers

__all__ = ["load_ipython_extension", "run_cell_on_ranks"]

_pools: dict[int, Workers] = {}


def _exec_cell(source: str) -> None:
    """Runs on each engine: execute the cell in the engine's persistent namespace."""
    try:
        namespace = get_ipython().user_ns  # noqa: F821 - engines are IPython kernels
    except NameError:
        import __main__

        namespace = __main__.__dict__
    exec(compile(source, "<distributed cell>", "exec"), namespace)


def run_cell_on_ranks(source: str, n: int, timeout: float = 600.0, restart: bool = False,
                      ranks: list[int] | None = None) -> None:
    if restart and n in _pools:
        _pools.pop(n).close()
    pool = _pools.get(n)
    if pool is None or not pool.started:
        if ranks is not None:
            raise ValueError(f"--ranks needs a warm pool of {n} ranks: run a cell with "
                             f"%%distributed -n {n} first")
        pool = _pools[n] = Workers(n=n)
    pool.run(_exec_cell, source, timeout=timeout, ranks=ranks)


def _parse(line: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="%%distributed", add_help=False)
    p.add_argument("-n", "--nprocs", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--restart", action="store_true")
    p.add_argument("--ranks", default=None)
    usage = "%%distributed -n N [--timeout S] [--restart] [--ranks R[,R...]]"
    try:
        args = p.parse_args(shlex.split(line))
    except SystemExit:
        raise ValueError(f"bad %%distributed options {line!r}; usage: {usage}") from None
    if args.nprocs < 1:
        raise ValueError(f"%%distributed needs -n >= 1, got {args.nprocs}")
    if args.ranks is not None:
        try:
            args.ranks = [int(r) for r in args.ranks.split(",")]
        except ValueError:
            raise ValueError(f"--ranks takes ranks separated by commas, e.g. --ranks 1 or --ranks 0,2; got "
                             f"{args.ranks!r}") from None
        if any(not 0 <= r < args.nprocs for r in args.ranks):
            raise ValueError(f"--ranks {args.ranks} outside 0..{args.nprocs - 1} for -n {args.nprocs}")
    return args


def close_pools() -> None:
    while _pools:
        _pools.popitem()[1].close()


def load_ipython_extension(ipython) -> None:
    from IPython.core.magic import register_cell_magic

    @register_cell_magic
    def distributed(line, cell):  # noqa: D401 - IPython magic
        args = _parse(line)
        run_cell_on_ranks(cell, args.nprocs, timeout=args.timeout, restart=args.restart, ranks=args.ranks)

    import atexit

    from hepml_kit.launch.fork_guard import watch_cuda_init

    watch_cuda_init(ipython)
    atexit.register(close_pools)

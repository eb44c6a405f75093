"""Benchmark: the notebook launcher against torchrun on the same trivial distributed function (2 ranks).

Measured side by side in one run (the machine is shared and noisy: interleaved repeats, medians):
- cold start: `Workers(n=2)` started and the first call returned, and `launch` one-shot (start, call, close);
- warm call: one more `Workers.run` on the warm pool (goal <= 0.5 s);
- torchrun: `torchrun --standalone --nproc-per-node 2` running the same function as a script.
Goal: cold start <= 2x torchrun's. Ends with one `RESULT ...` line.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import hepml_kit as hk

SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    t = torch.ones(1); dist.all_reduce(t)
    dist.barrier()
    dist.destroy_process_group()
""")


def trivial():
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)
    return t.item()


def time_torchrun(script: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", "2", script],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def main(repeats: int = 3, warm_calls: int = 20) -> None:
    os.environ.setdefault("IPP_NONINTERACTIVE", "1")
    script = os.path.join(tempfile.mkdtemp(), "trivial.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    cold, oneshot, torchrun, warm = [], [], [], []
    for r in range(repeats):
        torchrun.append(time_torchrun(script))
        t0 = time.perf_counter()
        pool = hk.Workers(n=2).start()
        pool.run(trivial, quiet=True)
        cold.append(time.perf_counter() - t0)
        for _ in range(warm_calls):
            t1 = time.perf_counter()
            pool.run(trivial, quiet=True)
            warm.append(time.perf_counter() - t1)
        pool.close()
        t0 = time.perf_counter()
        hk.launch(trivial, nprocs=2)
        oneshot.append(time.perf_counter() - t0)
        print(f"repeat {r + 1}/{repeats}: torchrun {torchrun[-1]:.2f} s, cold start {cold[-1]:.2f} s, "
              f"launch one-shot {oneshot[-1]:.2f} s, warm call median "
              f"{statistics.median(warm[-warm_calls:]):.3f} s",
              flush=True)
    med = statistics.median
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'':24}{'median (s)':>12}")
    for name, xs in (("torchrun 2 ranks", torchrun), ("Workers cold start", cold),
                     ("launch one-shot", oneshot), ("Workers warm call", warm)):
        print(f"{name:24}{med(xs):12.3f}")
    print(f"RESULT warm_call_s={med(warm):.3f} cold_start_s={med(cold):.2f} "
          f"launch_oneshot_s={med(oneshot):.2f} torchrun_s={med(torchrun):.2f} "
          f"ratio_cold_vs_torchrun={med(cold) / med(torchrun):.2f} "
          f"ratio_warm_vs_torchrun={med(warm) / med(torchrun):.3f}")


if __name__ == "__main__":
    main()

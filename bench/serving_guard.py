"""What the request guard costs: the same server reached through the guard and at Triton's own HTTP port.

`InferenceServer` puts `RequestGuard` (hepml_kit/serve/guard.py) on the public HTTP port: it reads each
request's header, checks it against the model's stated limits and passes it on to Triton's internal port. It
runs in a process of its own (`GuardProcess`). Here 8 clients (in another process) send batch-1 requests to
the MLP testbed (the cheapest model, so the guard's share is the largest) three ways, in rotating rounds, on
one server: through the guard's process, through a `RequestGuard` in the server's own process (where
PyTriton runs the model function: the guard's threads and the model then share one GIL; the kit's first
design), and straight to Triton.

    .venv/bin/python bench/serving_guard.py [--clients 8] [--requests 600] [--rounds 3]

Ends with one line: ``RESULT guarded_over_direct_throughput_ratio=...
in_process_guard_over_direct_throughput_ratio=... guarded_rps=... in_process_guard_rps=... direct_rps=...
guarded_p50_ms=... in_process_guard_p50_ms=... direct_p50_ms=... guard_added_p50_ms=... clients=8``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hepml_kit.serve import InferenceServer, client_process, load_test, mlp_model
from hepml_kit.serve.guard import RequestGuard


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=600, help="requests per round and arm")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if min(args.clients, args.requests, args.rounds) < 1:
        ap.error("--clients, --requests and --rounds must be >= 1")
    torch.set_num_threads(1)
    model = mlp_model()
    executor = client_process()
    arms = ("guarded", "in_process_guard", "direct")
    runs = {arm: [] for arm in arms}
    try:
        with InferenceServer([model]) as server:
            triton = (server.host, server.triton_http_port)
            in_process = RequestGuard(server.limits, server.host, 0, upstream=lambda: triton).start()
            urls = {"guarded": server.http_url, "in_process_guard": f"{server.host}:{in_process.port}",
                    "direct": f"{server.host}:{server.triton_http_port}"}
            for r in range(args.rounds):
                for arm in arms[r % 3:] + arms[: r % 3]:
                    result = load_test(
                        urls[arm],
                        model.name,
                        model.example,
                        requests=args.requests,
                        concurrency=args.clients,
                        executor=executor,
                    )
                    if result.failures:
                        raise RuntimeError(f"{arm}: {result.failures} failed requests: {result.errors}")
                    runs[arm].append(result)
                    print(
                        f"round {r}: {arm:16s} {result.throughput_rps:8.1f} req/s  p50 "
                        f"{result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms",
                        flush=True,
                    )
            in_process.stop()
    finally:
        executor.shutdown()
    rps = {arm: statistics.median(r.throughput_rps for r in rs) for arm, rs in runs.items()}
    p50 = {arm: statistics.median(r.p50_ms for r in rs) for arm, rs in runs.items()}
    print(
        f"mlp, {args.clients} clients, batch-1 over http (medians of {args.rounds} rounds): "
        f"through the guard's process {rps['guarded']:.1f} req/s (p50 {p50['guarded']:.2f} ms), "
        f"through a guard in the server's process {rps['in_process_guard']:.1f} req/s "
        f"(p50 {p50['in_process_guard']:.2f} ms), straight to "
        f"Triton {rps['direct']:.1f} req/s (p50 {p50['direct']:.2f} ms)"
    )
    print(
        f"RESULT guarded_over_direct_throughput_ratio={rps['guarded'] / rps['direct']:.3f} "
        f"in_process_guard_over_direct_throughput_ratio={rps['in_process_guard'] / rps['direct']:.3f} "
        f"guarded_rps={rps['guarded']:.1f} in_process_guard_rps={rps['in_process_guard']:.1f} "
        f"direct_rps={rps['direct']:.1f} guarded_p50_ms={p50['guarded']:.3f} "
        f"in_process_guard_p50_ms={p50['in_process_guard']:.3f} direct_p50_ms={p50['direct']:.3f} "
        f"guard_added_p50_ms={p50['guarded'] - p50['direct']:.3f} clients={args.clients}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

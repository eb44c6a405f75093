"""Dynamic batching against batch-1 serving, side by side on one real Triton server (PyTriton).

The jet flavour tagger (the `jet_transformer` testbed, `tiny` preset by default) is bound twice: once with
Triton's dynamic batcher and once without it, so every request runs alone ("batch-1 serving"). The batcher
(max batch 64) dispatches as soon as `--preferred` requests are queued (default: one per client) or when the
oldest has waited `--delay-us` (default 4 ms). With no delay it merges only what is already queued, and 8
closed-loop clients settle into two cohorts of about 4 per execution (try `--delay-us 0 --preferred`).

8 concurrent clients send batch-1 requests to each arm in alternating rounds (A B B A) so that the drifts of a
shared machine hit both alike; the result is the ratio of the median throughputs (goal >= 3x at 8 clients)
and the latency percentiles of each arm. `--sweep` also prints throughput and latency against concurrency and
request batch size, with in-process inference as the baseline.

    .venv/bin/python bench/serving.py [--preset tiny] [--clients 8] [--requests 600] [--rounds 3] [--sweep]
                                      [--clients-in process|thread] [--delay-us 4000] [--preferred 8]

By default the comparison runs twice: with the clients in a separate process (as real clients are; the
headline ratio) and as threads of the server's process, as in a notebook, where they compete for the CPU and
the GIL with the model's Python (``..._notebook_clients`` in the RESULT line).

Ends with one line: ``RESULT dynamic_over_batch1_throughput_ratio=... dynamic_rps=... batch1_rps=...
dynamic_p50_ms=... dynamic_p95_ms=... dynamic_p99_ms=... batch1_p50_ms=... batch1_p95_ms=... batch1_p99_ms=...
requests_per_execution=... clients=8 max_queue_delay_us=4000 preferred_batch=8 clients_in_process=1
dynamic_over_batch1_throughput_ratio_notebook_clients=...``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hepml_kit.serve import (
    Batching,
    InferenceServer,
    client_process,
    in_process_baseline,
    load_test,
    results_table,
    served_model,
)


def _tagger(preset: str, delay_us: int, preferred: tuple[int, ...]):
    """The jet tagger under Triton's dynamic batcher (max batch 64)."""
    batching = Batching(max_batch_size=64, max_queue_delay_us=delay_us, preferred_batch_sizes=preferred)
    return served_model("jet_transformer", preset=preset, batching=batching)


def compare(
    preset: str, clients: int, requests: int, rounds: int, delay_us: int, protocol: str, executor=None,
    preferred: tuple[int, ...] = (),
) -> dict:
    dynamic = _tagger(preset, delay_us, preferred)
    batch1 = dynamic.with_batching(Batching(max_batch_size=64, dynamic=False), "jet_transformer_batch1")
    runs = {dynamic.name: [], batch1.name: []}
    merged = {}
    with InferenceServer([dynamic, batch1]) as server:
        for r in range(rounds):
            order = [dynamic, batch1] if r % 2 == 0 else [batch1, dynamic]  # A B B A
            for model in order:
                server.reset_stats()
                result = load_test(
                    server.url(protocol),
                    model.name,
                    dynamic.example,
                    requests=requests,
                    concurrency=clients,
                    protocol=protocol,
                    executor=executor,
                )
                if result.failures:
                    raise RuntimeError(f"{result.failures} failed requests: {result.errors}")
                runs[model.name].append(result)
                merged[model.name] = server.stats(model.name)["requests_per_execution"]
                print(
                    f"round {r}: {model.name:24s} {result.throughput_rps:8.1f} req/s  p50 "
                    f"{result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  requests/execution "
                    f"{merged[model.name]:.2f}",
                    flush=True,
                )
    best = {name: sorted(rs, key=lambda r: r.throughput_rps)[len(rs) // 2] for name, rs in runs.items()}
    rps = {name: statistics.median(r.throughput_rps for r in rs) for name, rs in runs.items()}
    return {
        "dynamic": best[dynamic.name],
        "batch1": best[batch1.name],
        "ratio": rps[dynamic.name] / rps[batch1.name],
        "dynamic_rps": rps[dynamic.name],
        "batch1_rps": rps[batch1.name],
        "merged": merged[dynamic.name],
    }


def sweep_table(preset: str, requests: int, protocol: str, delay_us: int, executor=None, preferred=()):
    model = _tagger(preset, delay_us, preferred)
    rows = in_process_baseline(model, batch_sizes=(1, 8))
    with InferenceServer([model]) as server:
        for batch in (1, 8):
            for clients in (1, 2, 4, 8, 16):
                rows.append(
                    load_test(
                        server.url(protocol),
                        model.name,
                        model.example,
                        requests=requests,
                        concurrency=clients,
                        batch_size=batch,
                        protocol=protocol,
                        executor=executor,
                    ).row()
                )
    table = results_table(rows)[
        [
            "protocol",
            "concurrency",
            "batch_size",
            "throughput_rps",
            "samples_per_s",
            "p50_ms",
            "p95_ms",
            "p99_ms",
        ]
    ]
    return table.round(2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=("tiny", "small", "full"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=600, help="requests per round and arm")
    ap.add_argument("--rounds", type=int, default=3, help="A B, B A, A B ...: each arm runs this many rounds")
    ap.add_argument("--delay-us", type=int, default=4000, help="dynamic batcher max queue delay")
    ap.add_argument(
        "--preferred",
        type=int,
        nargs="*",
        default=None,
        help="dynamic batcher preferred batch sizes (default: the number of clients; none if given empty)",
    )
    ap.add_argument("--protocol", default="http", choices=("http", "grpc"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the model")
    ap.add_argument("--sweep", action="store_true", help="also print the concurrency x batch-size table")
    ap.add_argument(
        "--clients-in",
        default="both",
        choices=("both", "process", "thread"),
        help="clients in a separate process (as real clients are), as threads of the server's "
        "process (as in a notebook, sharing the GIL with the model), or both (default)",
    )
    args = ap.parse_args(argv)
    if min(args.clients, args.requests, args.rounds) < 1 or args.delay_us < 0:
        ap.error("--clients, --requests, --rounds must be >= 1 and --delay-us >= 0")
    preferred = (args.clients,) if args.preferred is None else tuple(args.preferred)
    if any(not 1 <= b <= 64 for b in preferred):
        ap.error("--preferred batch sizes must lie in [1, 64]")
    torch.set_num_threads(args.threads)
    where = ("process", "thread") if args.clients_in == "both" else (args.clients_in,)
    results, executor = {}, None
    for place in where:
        executor = client_process() if place == "process" else None
        r = results[place] = compare(
            args.preset, args.clients, args.requests, args.rounds, args.delay_us, args.protocol,
            executor, preferred
        )
        where_clients = "in another process" if place == "process" else "as threads of the server's process"
        print(
            f"jet_transformer ({args.preset}), {args.clients} clients {where_clients}, batch-1 requests over "
            f"{args.protocol}: dynamic batching {r['dynamic_rps']:.1f} req/s ({r['merged']:.2f} requests per "
            f"execution), batch-1 serving {r['batch1_rps']:.1f} req/s -> {r['ratio']:.2f}x (goal >= 3x)"
        )
        if args.sweep and place == where[0]:
            print(
                sweep_table(args.preset, args.requests, args.protocol, args.delay_us, executor,
                            preferred).to_string(
                    index=False
                )
            )
        if executor is not None:
            executor.shutdown()
    main_place = where[0]
    r = results[main_place]
    d, b = r["dynamic"], r["batch1"]
    extra = (
        f" dynamic_over_batch1_throughput_ratio_notebook_clients={results['thread']['ratio']:.3f}"
        if main_place != "thread" and "thread" in results
        else ""
    )
    print(
        f"RESULT dynamic_over_batch1_throughput_ratio={r['ratio']:.3f} dynamic_rps={r['dynamic_rps']:.1f} "
        f"batch1_rps={r['batch1_rps']:.1f} dynamic_p50_ms={d.p50_ms:.3f} dynamic_p95_ms={d.p95_ms:.3f} "
        f"dynamic_p99_ms={d.p99_ms:.3f} batch1_p50_ms={b.p50_ms:.3f} batch1_p95_ms={b.p95_ms:.3f} "
        f"batch1_p99_ms={b.p99_ms:.3f} requests_per_execution={r['merged']:.2f} clients={args.clients} "
        f"max_queue_delay_us={args.delay_us} preferred_batch={preferred[0] if preferred else 0} "
        f"clients_in_process={int(main_place == 'process')}{extra}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

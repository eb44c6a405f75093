"""Load-test a KServe v2 server from a notebook: latency p50/p95/p99 and throughput against the number of
concurrent clients and the request batch size, with in-process inference as the baseline, and a projection
to N GPUs (one server per GPU behind a load balancer).

Every loop is bounded (a fixed number of requests and a deadline) and by default only loopback servers are
targeted: a load test is a small denial-of-service, aim it at your own server.

    result = load_test(server.http_url, "jet_transformer", model.example, requests=1000, concurrency=8)
    result.row()   # {'concurrency': 8, 'batch_size': 1, 'throughput_rps': ..., 'p50_ms': ..., ...}

Taught in curriculum/08_inference_service.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LoadResult",
    "client_process",
    "in_process_baseline",
    "load_test",
    "plot_load_test",
    "project_gpus",
    "results_table",
    "sweep",
]

Request = dict[str, np.ndarray]


@dataclass
class LoadResult:
    """What one load-test point measured. Latencies are per request, seen by the client."""

    model: str
    protocol: str
    concurrency: int
    batch_size: int
    requests: int  # requests attempted
    failures: int
    seconds: float
    latencies_s: np.ndarray = field(repr=False)
    errors: list[str] = field(default_factory=list, repr=False)  # the first few failure messages

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1e3) if len(self.latencies_s) else float("nan")

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p95_ms(self) -> float:
        return self.percentile_ms(95)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    @property
    def throughput_rps(self) -> float:
        """Successful requests per second of wall time."""
        return (self.requests - self.failures) / self.seconds if self.seconds > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        return self.throughput_rps * self.batch_size

    def row(self) -> dict:
        return {
            "model": self.model,
            "protocol": self.protocol,
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "requests": self.requests,
            "failures": self.failures,
            "throughput_rps": self.throughput_rps,
            "samples_per_s": self.samples_per_s,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
        }


def _check_loopback(url: str) -> None:
    host = url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as err:
        raise ValueError(f"cannot resolve {host!r}: {err}") from None
    import ipaddress

    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(
            f"{url} is not a loopback address: load tests target your own local server only "
            "(pass allow_remote=True for a server you operate)"
        )


def load_test(
    url: str,
    model: str,
    example: Callable[[int, int], Request] | Request,
    *,
    requests: int = 1000,
    concurrency: int = 8,
    batch_size: int = 1,
    protocol: str = "http",
    warmup: int = 2,
    distinct: int = 16,
    timeout_s: float = 300.0,
    allow_remote: bool = False,
    executor=None,
) -> LoadResult:
    """Send `requests` requests from `concurrency` client threads (one client each) and time each one.

    Args:
        example: ``example(batch_size, seed) -> request`` (a `ServedModel.example`) or one fixed request.
        distinct: how many different requests to prepare and cycle through.
        warmup: requests per client sent before timing starts (connections, first executions).
        timeout_s: deadline for the whole test; requests not sent by then count as failures.
        executor: a ``concurrent.futures`` process pool (spawn) to run the clients in another process, as
            real clients are. By default they run as threads of this process, where they share the GIL with
            a server whose model runs here (PyTriton in a notebook): that slows batch-1 serving most.
    """
    if requests < 1 or concurrency < 1 or batch_size < 1:
        raise ValueError("requests, concurrency and batch_size must be >= 1")
    if not allow_remote:
        _check_loopback(url)
    pool = [example(batch_size, seed) for seed in range(distinct)] if callable(example) else [example]
    args = (url, model, pool, requests, concurrency, protocol, warmup, timeout_s)
    latencies, failures, errors, seconds = (
        executor.submit(_run_clients, *args).result() if executor is not None else _run_clients(*args)
    )
    return LoadResult(
        model=model,
        protocol=protocol,
        concurrency=concurrency,
        batch_size=batch_size,
        requests=requests,
        failures=failures,
        seconds=seconds,
        latencies_s=latencies,
        errors=errors,
    )


def _run_clients(
    url: str,
    model: str,
    pool: list[Request],
    requests: int,
    concurrency: int,
    protocol: str,
    warmup: int,
    timeout_s: float,
) -> tuple[np.ndarray, int, list[str], float]:
    """The bounded client loops of `load_test`: (latencies in s, failures, first errors, wall seconds)."""
    from hepml_kit.serve.client import ServiceClient, ServiceError

    shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    failures = [0] * concurrency
    stop = threading.Event()
    start_line = threading.Barrier(concurrency + 1)
    deadline = [float("inf")]

    def client_loop(k: int) -> None:
        try:
            client = ServiceClient(url, protocol)
        except Exception as err:  # noqa: BLE001 - reported as failures below
            errors.append(f"client {k}: {err}")
            failures[k] = shares[k]
            start_line.wait()
            return
        with client:
            prepared = [client.prepare(request) for request in pool]  # serialised once, as perf_analyzer does
            for i in range(warmup):
                try:
                    client.send(model, prepared[(k + i) % len(prepared)])
                except ServiceError:
                    pass
            start_line.wait()
            for i in range(shares[k]):
                if stop.is_set() or time.monotonic() > deadline[0]:
                    failures[k] += shares[k] - i
                    break
                t0 = time.perf_counter()
                try:
                    client.send(model, prepared[(k * 7919 + i) % len(prepared)])
                    latencies[k].append(time.perf_counter() - t0)
                except Exception as err:  # noqa: BLE001 - a load test counts every failure
                    failures[k] += 1
                    if len(errors) < 5:
                        errors.append(str(err))

    threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    try:
        start_line.wait(timeout=timeout_s)
        t0 = time.perf_counter()
        deadline[0] = time.monotonic() + timeout_s
        for t in threads:
            t.join(max(deadline[0] - time.monotonic(), 0) + 5.0)
        seconds = time.perf_counter() - t0
    except BaseException:  # KeyboardInterrupt from the kernel: stop the clients, then re-raise
        stop.set()
        for t in threads:
            t.join(10.0)
        raise
    stop.set()
    return np.array([x for lat in latencies for x in lat]), sum(failures), errors, seconds


def client_process():
    """A one-process spawn pool for `load_test(..., executor=...)`: clients outside this process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def sweep(
    url: str,
    model: str,
    example,
    *,
    concurrencies: Sequence[int] = (1, 2, 4, 8),
    batch_sizes: Sequence[int] = (1,),
    requests: int = 200,
    **kwargs,
) -> list[LoadResult]:
    """`load_test` at every (concurrency, batch size) point; `requests` per point."""
    return [
        load_test(url, model, example, requests=requests, concurrency=c, batch_size=b, **kwargs)
        for b in batch_sizes
        for c in concurrencies
    ]


def in_process_baseline(
    served, batch_sizes: Sequence[int] = (1, 8, 64), min_seconds: float = 0.5, warmup: int = 3
) -> list[dict]:
    """Latency and throughput of calling the model directly (`ServedModel.run`): no network, no queue.

    Each batch size runs for at least `min_seconds`, and throughput is calls / wall time, as in `load_test`
    (so both average over the same hiccups of a shared machine)."""
    import torch

    rows = []
    for b in batch_sizes:
        request = served.example(b, 0)
        for _ in range(warmup):
            served.run(request)
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < min_seconds or len(times) < 5:
            t0 = time.perf_counter()
            served.run(request)
            if served.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
        t = np.array(times)
        rows.append(
            {"model": served.name, "protocol": "in-process", "concurrency": 1, "batch_size": b,
             "throughput_rps": len(t) / wall, "samples_per_s": b * len(t) / wall,
             "p50_ms": np.percentile(t, 50) * 1e3, "p95_ms": np.percentile(t, 95) * 1e3,
             "p99_ms": np.percentile(t, 99) * 1e3}
        )  # fmt: skip
    return rows


def project_gpus(
    samples_per_s_per_gpu: float,
    bytes_per_sample: float,
    gpus: Sequence[int] = (1, 4, 16, 64, 256),
    gpus_per_node: int = 4,
    nic_bytes_per_s_per_node: float = 4 * 25e9,
    efficiency: float = 1.0,
) -> list[dict]:
    """Throughput of N independent servers (one per GPU, a load balancer in front).

    Replicas share nothing, so throughput grows as ``N * per-GPU * efficiency`` until the nodes' network
    cards cannot carry the requests: ``nodes * NIC bandwidth / bytes per sample``. Defaults: a Perlmutter GPU
    node, 4 A100 and 4 Slingshot-11 NICs at 25 GB/s each (NERSC documentation).
    """
    rows = []
    for n in gpus:
        nodes = -(-n // gpus_per_node)
        compute = n * samples_per_s_per_gpu * efficiency
        network = nodes * nic_bytes_per_s_per_node / bytes_per_sample
        rows.append(
            {
                "gpus": n,
                "nodes": nodes,
                "samples_per_s": min(compute, network),
                "bound": "compute" if compute <= network else "network",
            }
        )
    return rows


def results_table(results: Sequence[LoadResult | dict]):
    """A pandas DataFrame of load-test rows (and baseline rows)."""
    import pandas as pd

    return pd.DataFrame([r.row() if isinstance(r, LoadResult) else r for r in results])


def plot_load_test(results: Sequence[LoadResult], baseline: Sequence[dict] = (), title: str = ""):
    """Throughput and latency percentiles against concurrency, one line per (model, batch size); in-process
    throughput per batch size as grey horizontal lines. Returns the matplotlib figure."""
    import logging

    import matplotlib.pyplot as plt
    import mplhep
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # the ROOT style names absent fonts
    table = results_table(results)
    style = [
        mplhep.style.ROOT,
        {
            "font.size": 11,
            "axes.labelsize": 12,
            "legend.fontsize": 8,
            "xtick.labelsize": 10,
            "ytick.labelsize": 10,
            "axes.titlesize": 12,
        },
    ]
    with plt.style.context(style):
        fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
        for i, ((model, b), g) in enumerate(table.groupby(["model", "batch_size"], sort=False)):
            color = f"C{i}"
            g = g.sort_values("concurrency")
            ax_t.plot(g.concurrency, g.samples_per_s, "o-", color=color, label=f"{model}, batch {b}")
            ax_l.plot(g.concurrency, g.p50_ms, "o-", color=color, label=f"{model}, batch {b}: p50")
            ax_l.plot(g.concurrency, g.p99_ms, "s--", color=color, alpha=0.6, label="p99")
        for k, row in enumerate(sorted(baseline, key=lambda r: r["batch_size"])):
            ax_t.axhline(
                row["samples_per_s"],
                color="0.4",
                ls=(":", "--", "-.")[k % 3],
                lw=1.2,
                label=f"in-process, batch {row['batch_size']}",
            )
        ticks = sorted(table["concurrency"].unique())
        for ax, ylabel in ((ax_t, "samples / s"), (ax_l, "latency per request [ms]")):
            ax.set(xlabel="concurrent clients", ylabel=ylabel, xscale="log", yscale="log")
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(loc="best")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig

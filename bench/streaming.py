"""Benchmark: how many generator workers keep a trainer busy? Fresh Monte Carlo streamed against shards.

For one testbed (default the jet tagger, tiny preset, batch size of its tiny training defaults), measured
on this machine, each a median of interleaved repeats:

- generate: events/s that ONE generator worker makes (`MonteCarloStream.chunk` in one process);
- stream W: events/s a consumer receives from `stream_batches` with W forked worker processes (queue
  included), and with 2 workers on each engine that can run them on other nodes: 2 warm ipyparallel engines
  (`hepml_kit.Workers`, the kit's launcher) and 2 Ray actors (``--no-ray`` to skip Ray, ~20-40 s to start);
- first batch: seconds from asking to holding the first batch, per backend (forked workers started for the
  stream; the warm engine pool taking the stream; Ray actors started for the stream; the shards opened),
  and apart the one-off start of the engine pool and of Ray;
- shards: events/s read back as the same batch dicts from HDF5 shards of the same events
  (`write_shards` with the same seed first, then `ShardDataset`, one process);
- train: events/s one training rank consumes (optimizer steps on batches already in memory), and the
  same rank fed by the stream (W workers) and by the shards.

Then the projection to a Perlmutter A100 (40 GB, BF16 dense peak from `hepml_kit.profile.peaks`) at the
model's FULL preset: a GPU consumes ``peak * MFU / flops_per_sample`` events/s (MFU assumed, printed);
one worker makes the full preset's events at the rate measured here (one core of this VM; a Perlmutter
Milan core is taken as equal), so workers per GPU = that ratio. A Perlmutter GPU node has 64 cores for 4
GPUs: more than 16 workers per GPU means the simulation must come from CPU nodes (or a faster generator).

    .venv/bin/python bench/streaming.py [--model jet_transformer] [--mfu 0.4] [--quick] [--no-ray]

Ends with one ``RESULT ...`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from hepml_kit import Workers, models
from hepml_kit.data.shards import ShardDataset, write_shards
from hepml_kit.profile.peaks import DEVICE_PEAKS
from hepml_kit.simloop.engines import RayGenerators
from hepml_kit.simloop.streaming import MonteCarloStream, stream_batches

PERLMUTTER_CORES_PER_GPU = 16  # 64-core AMD EPYC 7763 per 4-A100 node


def rate_of(batches, n_events: int, consume=None) -> float:
    """Events/s taken from an iterator of batch dicts until `n_events` have arrived (first batch excluded:
    start-up is reported apart)."""
    it = iter(batches)
    first = next(it)
    if consume:
        consume(first)
    t0, n = time.perf_counter(), 0
    for batch in it:
        if consume:
            consume(batch)
        n += len(batch["event_index"]) if "event_index" in batch else _count(batch)
        if n >= n_events:
            break
    return n / (time.perf_counter() - t0)


def _count(batch) -> int:
    return int(next(v for v in batch.values() if torch.is_tensor(v) and v.ndim > 0).shape[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="jet_transformer", choices=models.names())
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed on the A100")
    ap.add_argument("--quick", action="store_true", help="fewer events and repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray actors (ray.init takes ~20-40 s)")
    args = ap.parse_args()
    if not 0 < args.mfu <= 1:
        ap.error(f"--mfu must be in (0, 1], got {args.mfu}")
    torch.set_num_threads(1)
    tb = models.get(args.model)
    cfg = tb.config("tiny")
    batch = tb.train_defaults["tiny"]["batch_size"]
    steps = 16 if args.quick else 32
    n = steps * batch
    repeats = args.repeats or (1 if args.quick else 2)
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} cores; date {time.strftime('%Y-%m-%d %H:%M')}; "
          f"{args.model} tiny, batch {batch}, {n} events per pass, medians of {repeats} interleaved repeats")

    torch.manual_seed(0)
    model = tb.build(cfg)
    opt = tb.optimizer(model, cfg, tb.train_defaults["tiny"]["lr"])

    def train(b):
        tb.step(model, {k: v for k, v in b.items() if k not in ("event_index", "step")}, opt)

    def stream(seed, **kw):
        return MonteCarloStream(args.model, "tiny", seed=seed, batch_size=batch, steps=steps + 1, **kw)

    def first_batch_s(batches) -> float:
        t0 = time.perf_counter()
        next(iter(batches))
        return time.perf_counter() - t0

    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="hepml-bench-stream-") as root, contextlib.ExitStack() as stack:
        write_shards(args.model, (steps + 1) * batch, 4, root, seed=0, progress=False)  # the streamed events
        memory = list(stream_batches(stream(0), workers=0))
        t0 = time.perf_counter()
        engines = stack.enter_context(Workers(2, device="cpu"))
        engines.view()
        engines_start = time.perf_counter() - t0
        ray_start = None
        if not args.no_ray:
            from hepml_kit.hpo.ray_backend import ray_session

            t0 = time.perf_counter()
            try:
                stack.enter_context(ray_session(num_cpus=2))
                ray_start = time.perf_counter() - t0
            except Exception as e:  # a loaded machine can miss Ray's start-up waits twice: go on without it
                print(f"Ray did not start ({type(e).__name__}: {str(e)[:200]}): no Ray figures this run")
        backends = {"fork": lambda: 2, "engines": lambda: engines}
        if ray_start is not None:
            backends["ray"] = lambda: RayGenerators(2)
        for _ in range(repeats):
            for name, workers in backends.items():
                rows.setdefault(f"first_{name}_s", []).append(
                    first_batch_s(stream_batches(stream(0), workers=workers(), timeout_s=300, log=None)))
            rows.setdefault("first_shards_s", []).append(
                first_batch_s(ShardDataset(root, batch_size=batch, rank=0, world_size=1)))
            measured = [
                ("generate", lambda: rate_of(stream(0), n)),
                ("stream1", lambda: rate_of(stream_batches(stream(0), workers=1), n)),
                *[(f"{name}2", lambda w=workers: rate_of(stream_batches(stream(0), workers=w(), timeout_s=300,
                                                                        log=None), n))
                  for name, workers in backends.items()],
                ("shards", lambda: rate_of(ShardDataset(root, batch_size=batch, rank=0, world_size=1), n)),
                ("train_memory", lambda: rate_of(memory, n, train)),
                ("train_stream2", lambda: rate_of(stream_batches(stream(0), workers=2), n, train)),
                ("train_engines2",
                 lambda: rate_of(stream_batches(stream(0), workers=engines, log=None), n, train)),
                ("train_shards",
                 lambda: rate_of(ShardDataset(root, batch_size=batch, rank=0, world_size=1), n, train)),
            ]
            for name, measure in measured:
                rows.setdefault(name, []).append(measure())
    med = {k: statistics.median(v) for k, v in rows.items()}
    gen, train_rate = med["generate"], med["train_memory"]
    print(f"\n{'events/s (one process each unless said)':48} {'value':>10} {'/ generate':>11}")
    labels = [("generate", "1 generator worker"), ("stream1", "stream, 1 forked worker (queue incl.)"),
              ("fork2", "stream, 2 forked workers"),
              ("engines2", "stream, 2 ipyparallel engines (warm pool)"),
              ("ray2", "stream, 2 Ray actors"), ("shards", "shards (same events, HDF5)"),
              ("train_memory", "1 training rank, batches in memory"),
              ("train_stream2", "1 training rank fed by 2 forked workers"),
              ("train_engines2", "1 training rank fed by 2 ipyparallel engines"),
              ("train_shards", "1 training rank fed by shards")]
    for key, label in labels:
        if key in med:
            print(f"{label:48} {med[key]:10.0f} {med[key] / gen:10.2f}x")
    print(f"\n{'seconds to the first batch':48} {'value':>10}")
    for key, label in [("first_fork_s", "2 forked workers, started for the stream"),
                       ("first_engines_s", "2 ipyparallel engines, warm pool"),
                       ("first_ray_s", "2 Ray actors, started for the stream"),
                       ("first_shards_s", "shards, opened")]:
        if key in med:
            print(f"{label:48} {med[key]:9.2f} s")
    print(f"{'start of the 2-engine pool (once)':48} {engines_start:9.2f} s")
    if ray_start is not None:
        print(f"{'start of Ray (ray.init, once)':48} {ray_start:9.2f} s")
    workers_cpu = train_rate / gen

    # projection: Perlmutter A100 at the full preset
    full = tb.config("full")
    a100 = DEVICE_PEAKS["A100-40GB"]
    gpu_rate = a100.flops["bf16"] * args.mfu / tb.flops_per_sample(full)
    probe = MonteCarloStream(args.model, "full",
                             batch_size=min(batch, 64) if args.model != "tracking_gnn" else 2)
    probe.chunk(0)
    t0 = time.perf_counter()
    for s in range(1, 4):
        probe.chunk(s)
    gen_full = 3 * probe.batch_size / (time.perf_counter() - t0)
    workers_gpu = gpu_rate / gen_full
    print(f"\nA100 projection, {args.model} FULL preset: {tb.flops_per_sample(full):.3g} FLOP/event "
          f"(fwd+bwd), {a100.flops['bf16'] / 1e12:.0f} TFLOP/s bf16 ({a100.source}) x MFU {args.mfu:g} -> "
          f"{gpu_rate:,.0f} events/s per GPU; one worker makes {gen_full:,.0f} "
          f"events/s of the full preset -> {workers_gpu:,.0f} workers per GPU "
          f"({math.ceil(workers_gpu / PERLMUTTER_CORES_PER_GPU)}x the {PERLMUTTER_CORES_PER_GPU} cores a "
          "Perlmutter GPU node has per GPU)")
    print(f"on this CPU: one training rank eats {train_rate:,.0f} events/s = "
          f"{workers_cpu:.2f} generator workers")
    ray_fields = [] if ray_start is None else [
        f"ray_2actors_events_per_s={med['ray2']:.0f}", f"ray_events_per_s_per_worker={med['ray2'] / 2:.0f}",
        f"ray_first_batch_s={med['first_ray_s']:.2f}", f"ray_start_s={ray_start:.2f}"]
    print("RESULT " + " ".join([
        f"generate_events_per_s_per_worker={gen:.0f}", f"stream_1worker_events_per_s={med['stream1']:.0f}",
        f"stream_2workers_events_per_s={med['fork2']:.0f}",
        f"fork_events_per_s_per_worker={med['fork2'] / 2:.0f}",
        f"engines_2workers_events_per_s={med['engines2']:.0f}",
        f"engines_events_per_s_per_worker={med['engines2'] / 2:.0f}", *ray_fields,
        f"shards_events_per_s={med['shards']:.0f}",
        f"fork_first_batch_s={med['first_fork_s']:.2f}",
        f"engines_first_batch_s={med['first_engines_s']:.2f}",
        f"engines_pool_start_s={engines_start:.2f}", f"shards_first_batch_s={med['first_shards_s']:.2f}",
        f"train_fed_by_engines_events_per_s={med['train_engines2']:.0f}",
        f"shards_over_generate={med['shards'] / gen:.1f}",
        f"train_events_per_s_per_rank_cpu={train_rate:.0f}",
        f"train_fed_by_stream_events_per_s={med['train_stream2']:.0f}",
        f"train_fed_by_shards_events_per_s={med['train_shards']:.0f}",
        f"workers_per_cpu_rank={workers_cpu:.2f}", f"stream_startup_s={med['first_fork_s']:.2f}",
        f"a100_full_events_per_s={gpu_rate:.0f}", f"generate_full_events_per_s_per_worker={gen_full:.0f}",
        f"a100_full_workers_per_gpu={workers_gpu:.0f}", f"mfu_assumed={args.mfu:g}"]))


if __name__ == "__main__":
    main()

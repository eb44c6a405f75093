"""Benchmark: how many generator workers keep a trainer busy? Fresh Monte Carlo streamed against shards.

For one testbed (default the jet tagger, tiny preset, batch size of its tiny training defaults), measured
on this machine, each a median of interleaved repeats:

- generate: events/s that ONE generator worker makes (`MonteCarloStream.chunk` in one process);
- stream W: events/s a consumer receives from `stream_batches` with W worker processes (queue included);
- shards: events/s read back as the same batch dicts from HDF5 shards of the same events
  (`write_shards` with the same seed first, then `ShardDataset`, one process);
- train: events/s one training rank consumes (optimizer steps on batches already in memory), and the
  same rank fed by the stream (W workers) and by the shards.

Then the projection to a Perlmutter A100 (40 GB, BF16 dense peak from `hepml_kit.profile.peaks`) at the
model's FULL preset: a GPU consumes ``peak * MFU / flops_per_sample`` events/s (MFU assumed, printed);
one worker makes the full preset's events at the rate measured here (one core of this VM; a Perlmutter
Milan core is taken as equal), so workers per GPU = that ratio. A Perlmutter GPU node has 64 cores for 4
GPUs: more than 16 workers per GPU means the simulation must come from CPU nodes (or a faster generator).

    .venv/bin/python bench/streaming.py [--model jet_transformer] [--mfu 0.4] [--quick]

Ends with one ``RESULT ...`` line.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from hepml_kit import models
from hepml_kit.data.shards import ShardDataset, write_shards
from hepml_kit.profile.peaks import DEVICE_PEAKS
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

    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="hepml-bench-stream-") as root:
        write_shards(args.model, (steps + 1) * batch, 4, root, seed=0, progress=False)  # the streamed events
        memory = list(stream_batches(stream(0), workers=0))
        for _ in range(repeats):
            t0 = time.perf_counter()
            first = next(stream_batches(stream(0), workers=2, log=None))
            start = time.perf_counter() - t0
            del first
            for name, value in [
                ("generate", rate_of(stream(0), n)),
                ("stream1", rate_of(stream_batches(stream(0), workers=1), n)),
                ("stream2", rate_of(stream_batches(stream(0), workers=2), n)),
                ("shards", rate_of(ShardDataset(root, batch_size=batch, rank=0, world_size=1), n)),
                ("train_memory", rate_of(memory, n, train)),
                ("train_stream2", rate_of(stream_batches(stream(0), workers=2), n, train)),
                ("train_shards",
                 rate_of(ShardDataset(root, batch_size=batch, rank=0, world_size=1), n, train)),
                ("startup_s", start),
            ]:
                rows.setdefault(name, []).append(value)
    med = {k: statistics.median(v) for k, v in rows.items()}
    gen, train_rate = med["generate"], med["train_memory"]
    print(f"\n{'events/s (one process each unless said)':44} {'value':>10} {'/ generate':>11}")
    for key, label in [("generate", "1 generator worker"), ("stream1", "stream, 1 worker (queue incl.)"),
                       ("stream2", "stream, 2 workers"), ("shards", "shards (same events, HDF5)"),
                       ("train_memory", "1 training rank, batches in memory"),
                       ("train_stream2", "1 training rank fed by stream, 2 workers"),
                       ("train_shards", "1 training rank fed by shards")]:
        print(f"{label:44} {med[key]:10.0f} {med[key] / gen:10.2f}x")
    print(f"{'first batch from 2 new workers':44} {med['startup_s']:9.2f} s")
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
    print("RESULT " + " ".join([
        f"generate_events_per_s_per_worker={gen:.0f}", f"stream_1worker_events_per_s={med['stream1']:.0f}",
        f"stream_2workers_events_per_s={med['stream2']:.0f}", f"shards_events_per_s={med['shards']:.0f}",
        f"shards_over_generate={med['shards'] / gen:.1f}",
        f"train_events_per_s_per_rank_cpu={train_rate:.0f}",
        f"train_fed_by_stream_events_per_s={med['train_stream2']:.0f}",
        f"train_fed_by_shards_events_per_s={med['train_shards']:.0f}",
        f"workers_per_cpu_rank={workers_cpu:.2f}", f"stream_startup_s={med['startup_s']:.2f}",
        f"a100_full_events_per_s={gpu_rate:.0f}", f"generate_full_events_per_s_per_worker={gen_full:.0f}",
        f"a100_full_workers_per_gpu={workers_gpu:.0f}", f"mfu_assumed={args.mfu:g}"]))


if __name__ == "__main__":
    main()

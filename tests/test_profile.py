"""hepml_kit.profile: step profiler numbers, MFU, ranks, DDP comm hook, Lightning callback, traces,
the ladder and the scaling study on 1 and 2 CPU ranks.

No test asserts a speed: the sleeps test checks that the profiler *accounts* for known time (phases at
least their sleep, adding up to the step), which holds however loaded the machine is.
"""

import json
import re
import sys
import time

import pytest
import torch

import hepml_kit as hk
from hepml_kit.profile import (
    DEVICE_PEAKS,
    StepProfiler,
    climb,
    combine_rank_summaries,
    count_samples,
    device_peak,
    profile_ops,
    progress_mode,
    run_rung,
    scaling_study,
    standard_ladder,
    train_testbed_ddp,
)
from hepml_kit.profile.peaks import lookup_gpu, precision_of

SLEEPS = {"data": 0.004, "forward": 0.012, "backward": 0.020, "optimizer": 0.006}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _sleepy_loop(prof, steps):
    for _ in range(steps):
        with prof.step():
            for name, seconds in SLEEPS.items():
                with prof.phase(name):
                    time.sleep(seconds)


def test_phases_of_known_sleeps_add_up_to_the_step():
    prof = StepProfiler(samples_per_step=32, unit="jets", warmup_steps=1)
    _sleepy_loop(prof, 6)
    s = prof.summary()
    assert s["steps"] == 5 and s["world_size"] == 1 and s["device"] == "cpu"
    for name, seconds in SLEEPS.items():
        assert s[f"{name}_s"] >= 0.99 * seconds, f"{name} shorter than its sleep"
    named = sum(s[f"{n}_s"] for n in SLEEPS)
    assert abs(named - s["step_s"]) <= 0.05 * s["step_s"], (named, s["step_s"])
    assert abs(named + s["other_s"] - s["step_s"]) < 1e-9
    assert s["forward_s"] < s["backward_s"]  # 12 ms vs 20 ms sleeps: far apart even under load
    assert s["samples_per_s"] == pytest.approx(32 / s["step_s"])
    assert s["jets_per_s"] == s["samples_per_s"] == s["global_jets_per_s"]
    assert s["memory_kind"].startswith("process") and s["peak_memory_bytes"] > 1e6
    assert sum(s[f"{n}_frac"] for n in (*SLEEPS, "other")) == pytest.approx(1.0)
    table = prof.table(s)
    assert list(table.index) == ["data", "forward", "backward", "optimizer", "other", "step"]
    assert "GiB" in prof.report(s)


def test_iterate_times_the_data_wait_and_counts_samples():
    def slow_loader():
        for i in range(5):
            time.sleep(0.005)
            yield {"x": torch.zeros(8 + i, 3)}

    prof = StepProfiler(warmup_steps=0)
    seen = 0
    for _batch in prof.iterate(slow_loader()):
        with prof.phase("forward"):
            seen += 1
        if seen == 4:
            break  # the step of a broken-off loop still ends
    s = prof.summary()
    assert s["steps"] == 4
    assert s["samples_per_step"] == pytest.approx((8 + 9 + 10 + 11) / 4)
    assert s["data_s"] >= 0.99 * 0.005


def test_misuse_fails_clearly():
    prof = StepProfiler(samples_per_step=1)
    with pytest.raises(RuntimeError, match="outside a step"):
        prof.begin_phase("forward")
    with pytest.raises(RuntimeError, match="must not nest"):
        with prof.step(), prof.phase("forward"), prof.phase("backward"):
            pass
    with pytest.raises(RuntimeError, match="no steps measured"):
        StepProfiler(samples_per_step=1, warmup_steps=3).summary()
    with pytest.raises(ValueError, match="unit"):
        StepProfiler(unit="jets per second")
    with pytest.raises(ValueError, match="cannot count samples"):
        count_samples(object())


def test_mfu_from_a_known_flop_count():
    # a Linear(256 -> 256) trained on batches of 64: forward 2*256*256 FLOPs per sample, backward twice that
    layer, flops = torch.nn.Linear(256, 256, bias=False), 6 * 256 * 256
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    x = torch.randn(64, 256)
    prof = StepProfiler(samples_per_step=64, flops_per_sample=flops, peak_flops=1e12, warmup_steps=1)
    for _ in range(4):
        with prof.step():
            with prof.phase("forward"):
                loss = layer(x).square().mean()
            with prof.phase("backward"):
                loss.backward()
            with prof.phase("optimizer"):
                opt.step()
    s = prof.summary()
    assert s["flops_per_s"] == pytest.approx(flops * 64 / s["step_s"])
    assert s["mfu"] == pytest.approx(s["flops_per_s"] / 1e12) and s["peak_source"] == "given"
    # against this CPU's measured matmul peak the same loop uses a plausible share of it
    measured = StepProfiler(samples_per_step=64, flops_per_sample=flops, warmup_steps=0)
    peak, source = measured.peak_flops()
    assert peak > 1e8 and "measured fp32 matmul on CPU" in source
    assert 0 < s["flops_per_s"] / peak < 2


def test_device_peak_table_and_precisions():
    assert lookup_gpu("NVIDIA H200").flops["bf16"] == pytest.approx(989.5e12)
    assert lookup_gpu("NVIDIA H100 80GB HBM3").name == "H100-SXM"
    assert lookup_gpu("NVIDIA H100 PCIe").name == "H100-PCIe"
    assert lookup_gpu("NVIDIA A100-SXM4-80GB").name == "A100-80GB"
    assert lookup_gpu("NVIDIA A100-SXM4-40GB").flops["fp32"] == pytest.approx(19.5e12)
    assert lookup_gpu("Tesla T4") is None
    assert all(p.flops["bf16"] > p.flops["fp32"] for p in DEVICE_PEAKS.values())
    assert precision_of(torch.bfloat16, "cuda") == "bf16" and precision_of("float32", "cpu") == "fp32"
    with pytest.raises(ValueError):
        precision_of("int8", "cpu")
    peak, source = device_peak("cpu", torch.float32)
    assert peak > 0 and "CPU" in source


def test_combine_rank_summaries_shows_the_straggler():
    a = {"unit": "jets", "steps": 5, "step_s": 0.10, "samples_per_s": 100.0, "forward_s": 0.04}
    b = {"unit": "jets", "steps": 5, "step_s": 0.20, "samples_per_s": 50.0, "forward_s": 0.08}
    s = combine_rank_summaries([a, b])
    assert s["world_size"] == 2 and s["steps"] == 5
    assert s["step_s"] == pytest.approx(0.15) and s["step_s_min"] == 0.10 and s["step_s_max"] == 0.20
    assert s["global_samples_per_s"] == 150.0 == s["global_jets_per_s"]
    assert s["straggler_rank"] == 1


def _ddp_profiled(steps=4):
    """Rank function: a small DDP model with the comm hook; returns the gathered summary."""
    import torch.distributed as dist

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=0.02)
    prof = StepProfiler(samples_per_step=16, warmup_steps=1)
    prof.attach_ddp(ddp)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(16, 64) + dist.get_rank()
    for _ in range(steps):
        with prof.step():
            with prof.phase("forward"):
                loss = ddp(x).square().mean()
            with prof.phase("backward"):
                loss.backward()
            with prof.phase("optimizer"):
                opt.step()
                opt.zero_grad()
    s = prof.summary()
    s["param_bytes"] = sum(p.numel() * p.element_size() for p in net.parameters())
    return s


@pytest.fixture(scope="module")
def pool():
    with hk.Workers(n=2, device="cpu") as w:
        yield w


def test_ddp_comm_hook_and_rank_gathering(pool):
    r0, r1 = pool.run(_ddp_profiled)
    assert r0["world_size"] == 2 and r0["global_samples_per_s"] == pytest.approx(2 * r0["samples_per_s"])
    assert r0["comm_bytes"] == r0["param_bytes"]  # every gradient byte all-reduced once per step
    assert r0["comm_in_flight_s"] > 0 and 0 <= r0["communication_s"] <= r0["step_s"]
    assert r0["step_s_min"] <= r0["step_s"] <= r0["step_s_max"]
    assert r0["straggler_rank"] in (0, 1) and r0["step_s"] == r1["step_s"]  # both ranks got the same summary
    phases = sum(r0[f"{p}_s"] for p in ("forward", "backward", "communication", "optimizer", "other"))
    assert phases == pytest.approx(r0["step_s"], rel=1e-6)


def test_scaling_study_on_one_and_two_cpu_ranks(pool):
    def launcher(fn, nprocs, timeout, device, **kw):
        # one rank through hk.launch itself, two on the module's warm pool (the same machinery, without
        # starting a second pair of engines)
        assert device == "cpu"
        if nprocs == 1:
            return hk.launch(fn, nprocs=1, timeout=timeout, device=device, **kw)
        return pool.run(fn, timeout=timeout, **kw)

    lines = []
    df = scaling_study(train_testbed_ddp, nprocs=[1, 2], mode="strong", batch_size=64, device="cpu",
                       log=lines.append, launcher=launcher, model="jet_transformer", preset="tiny", steps=3,
                       warmup_steps=1)
    assert list(df["nprocs"]) == [1, 2] and list(df["batch_per_rank"]) == [64, 32]
    assert (df["global_batch"] == 64).all() and (df["unit"] == "jets").all()
    assert df["speedup"].iloc[0] == 1.0 and list(df["ideal_speedup"]) == [1.0, 2.0]
    assert (df["samples_per_s"] > 0).all() and (df["efficiency"] > 0).all()
    assert df["communication_frac"].iloc[1] >= 0
    assert df.attrs["kind"] == "measurement"
    assert any("nprocs=2" in line for line in lines)  # plain progress lines outside Jupyter


def test_scaling_study_rejects_bad_input_before_launching():
    def never(**kw):
        raise AssertionError("must not launch")

    with pytest.raises(ValueError, match="not divisible"):
        scaling_study(never, nprocs=[1, 3], batch_size=64, launcher=never)
    with pytest.raises(ValueError, match="mode"):
        scaling_study(never, mode="sideways", batch_size=64, launcher=never)
    with pytest.raises(ValueError, match="positive integers"):
        scaling_study(never, nprocs=[0, 1], batch_size=64, launcher=never)
    with pytest.raises(TypeError, match="StepProfiler.summary"):
        scaling_study(never, nprocs=[1], batch_size=4, log=None, launcher=lambda fn, **kw: [42.0])


def test_progress_mode_is_plain_outside_jupyter(monkeypatch):
    monkeypatch.delenv("HEPML_KIT_PROGRESS", raising=False)
    assert progress_mode() == "plain"
    monkeypatch.setenv("HEPML_KIT_PROGRESS", "none")
    assert progress_mode() == "none"


def test_lightning_callback_reports_the_same_phases(tmp_path):
    import lightning as L
    from lightning.pytorch.plugins.environments import LightningEnvironment

    from hepml_kit.profile import ProfilerCallback

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(96, 8), torch.randn(96, 1))
    cb = ProfilerCallback(verbose=False, unit="events", warmup_steps=1)
    # an explicit cluster environment: Lightning's detection would import mpi4py, i.e. start MPI (and an
    # Open MPI daemon) in the test process
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[cb], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, plugins=[LightningEnvironment()])
    trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=16))
    s = cb.summary
    assert s["steps"] == 2 * 6 - 1  # 6 batches per epoch, one warm-up step
    assert s["samples_per_step"] == 16 and s["events_per_s"] > 0
    for phase in ("data", "forward", "backward", "optimizer"):
        assert s[f"{phase}_s"] > 0, phase
    assert list(cb.table().index)[:4] == ["data", "forward", "backward", "optimizer"]


def test_profile_ops_table_trace_and_phase_labels(tmp_path):
    layer = torch.nn.Linear(32, 32)
    prof = StepProfiler(samples_per_step=8, warmup_steps=0)
    with profile_ops("unit", trace_dir=tmp_path, show=False) as ops:
        for _ in range(2):
            with prof.step():
                with prof.phase("forward"):
                    loss = layer(torch.randn(8, 32)).sum()
                with prof.phase("backward"):
                    loss.backward()
    assert {"operator", "calls", "self_cpu_ms", "share"} <= set(ops.table.columns)
    assert ops.table["operator"].str.startswith("aten::").any()
    trace = json.loads(ops.trace_path.read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"phase:forward", "phase:backward"} <= names
    assert ops.trace_path.name.endswith(".pt.trace.json")


def test_ladder_rungs_run_and_report():
    from hepml_kit import models

    tb = models.get("jet_transformer")
    cfg = tb.config("tiny")
    data = tb.generate(cfg, 96, seed=0)
    rungs = standard_ladder(workers=1)
    assert [r.name for r in rungs][0] == "fp32 baseline" and rungs[-1].compile and rungs[-1].bf16
    base = run_rung(tb, cfg, data, rungs[0], batch_size=32, steps=2, warmup_steps=1)
    loader = run_rung(tb, cfg, data, rungs[1], batch_size=32, steps=2, warmup_steps=1)
    for s in (base, loader):
        assert s["steps"] == 2 and s["samples_per_step"] == 32 and s["mfu"] > 0
        assert s["final_loss"] == s["final_loss"]  # not NaN
    assert loader["rung"] == "+ loader workers, pinned"
    with pytest.raises(ValueError, match="no full batch"):
        run_rung(tb, cfg, data, rungs[0], batch_size=1000, steps=1)


def test_gpu_check_script_cpu_smoke_survives_failing_checks(tmp_path, monkeypatch, capsys):
    """bench/gpu_check.py's runner: real checks at tiny shapes on CPU, plus checks that fail, hang or return
    several rows; every one gets its row, the results file is written, the exit code reports failures."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", path)
    gc = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gc)  # dataclasses look their module up
    spec.loader.exec_module(gc)
    keep = {"env", "profiler", "ddp_comm_hook", "serve_torchscript"}
    monkeypatch.setattr(gc, "CHECKS", [c for c in gc.CHECKS if c.name in keep])
    gc.register("several", lambda: [{"model": "a", "ok": True}, {"model": "b", "ok": False}], budget_s=5)
    gc.register("broken", lambda ctx: 1 / 0, budget_s=5)
    gc.register("hangs", lambda ctx: time.sleep(60), budget_s=1)
    rc = gc.main(["--cpu-smoke", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    statuses = dict(re.findall(r"^(\S+)\s+(ok|ERROR|TIMEOUT|SKIPPED|FAILED)\b", out, re.M))
    assert statuses == {"env": "ok", "profiler": "ok", "ddp_comm_hook": "ok", "serve_torchscript": "SKIPPED",
                        "several[0]": "ok", "several[1]": "FAILED", "several": "ok", "broken": "ERROR",
                        "hangs": "TIMEOUT"}
    assert "checks_failed=3" in out.splitlines()[-1] and out.splitlines()[-1].startswith("RESULT")
    report = next(tmp_path.glob("gpu_check_*_cpu-smoke.md")).read_text()
    assert "ZeroDivisionError" in report and "| profiler | ok |" in report


def test_climb_repeats_alternate_rungs_and_report_median_and_spread():
    from hepml_kit import models

    tb = models.get("jet_transformer")
    cfg = tb.config("tiny")
    data = tb.generate(cfg, 32, seed=0)
    rungs = standard_ladder(workers=1, compile=False)[::3]  # fp32 baseline, + fused AdamW
    lines = []
    df = climb(tb, cfg, data, rungs, batch_size=16, steps=1, warmup_steps=1, repeats=3, log=lines.append)
    assert [line.split(": ")[0] for line in lines] == [f"[ladder] round {r}/3" for r in (1, 1, 2, 2, 3, 3)]
    assert [line.split(": ")[1] for line in lines] == [r.name for r in rungs] * 3  # rounds alternate rungs
    assert list(df["rung"]) == [r.name for r in rungs] and (df["repeats"] == 3).all()
    for col in ("samples_per_s", "speedup"):
        assert (df[f"{col}_min"] <= df[col]).all() and (df[col] <= df[f"{col}_max"]).all()
    assert df["speedup"].iloc[0] == 1.0
    single = climb(tb, cfg, data, rungs[:1], batch_size=16, steps=1, warmup_steps=1, log=None)
    assert "samples_per_s_min" not in single and list(single["speedup"]) == [1.0]
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        climb(tb, cfg, data, rungs, batch_size=16, steps=1, repeats=0)

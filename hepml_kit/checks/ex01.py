"""Checks for curriculum/01_single_device's exercises: time the phases of a step, compute MFU.

``ex01_phases(profile_steps)``: ``profile_steps(model, batches, loss_fn, optimizer) -> dict`` trains one step
per batch under a `StepProfiler` with the forward, backward and optimizer phases, and returns its summary.
``ex01_mfu(model_flops_utilisation)``: ``model_flops_utilisation(samples_per_s, flops_per_sample,
peak_flops) -> float``, the share of the device's peak the training achieves.

The phase check needs no clock: it watches which phase is open when the model's forward, its backward and
the optimizer's step actually run.
"""

from __future__ import annotations

import contextlib

from hepml_kit.checks import CheckFailed, passed

__all__ = ["HINTS", "ex01_mfu", "ex01_phases"]

HINTS = {
    "ex01_phases": "Make a StepProfiler, then `for batch in prof.iterate(batches):` (each iteration is one "
    "step; the wait for the batch is its 'data' phase) and inside it three blocks: "
    "`with prof.phase(\"forward\"):` around `loss = loss_fn(model, batch)`, "
    "`with prof.phase(\"backward\"):` around `loss.backward()`, and "
    "`with prof.phase(\"optimizer\"):` around `optimizer.step()` and `optimizer.zero_grad()`. "
    "Return `prof.summary()`.",
    "ex01_mfu": "Achieved FLOP/s = samples per second x FLOPs per sample (the testbed's flops_per_sample "
    "already counts forward and backward). MFU is achieved FLOP/s divided by the peak, a fraction between "
    "0 and 1.",
}

_open_phase: list[str | None] = [None]  # the phase a StepProfiler has open right now, seen by the spies


@contextlib.contextmanager
def _watch_phases():
    """Follow every StepProfiler's open phase while the learner's code runs."""
    from hepml_kit.profile.step import StepProfiler

    begin, end = StepProfiler.begin_phase, StepProfiler.end_phase

    def spy_begin(self, name):
        begin(self, name)
        _open_phase[0] = name

    def spy_end(self):
        end(self)
        _open_phase[0] = None

    StepProfiler.begin_phase, StepProfiler.end_phase = spy_begin, spy_end
    try:
        yield
    finally:
        StepProfiler.begin_phase, StepProfiler.end_phase = begin, end
        _open_phase[0] = None


def _spy_model_and_optimizer(seen: list):
    import torch

    class Backward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            seen.append(("backward", _open_phase[0]))
            return grad

    class Watched(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, x):
            seen.append(("forward", _open_phase[0]))
            return self.linear(Backward.apply(x))

    class WatchedSGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(("optimizer", _open_phase[0]))
            return super().step(closure)

    model = Watched()
    return model, WatchedSGD(model.parameters(), lr=0.01)


def ex01_phases(fn) -> None:
    """Run the learner's `fn(model, batches, loss_fn, optimizer)` on a model reporting the open phase."""
    import torch

    seen: list = []
    model, opt = _spy_model_and_optimizer(seen)
    batches = [torch.randn(8, 4, requires_grad=True) for _ in range(4)]

    def loss_fn(m, batch):
        return m(batch).square().mean()

    with _watch_phases():
        summary = fn(model, batches, loss_fn, opt)
    if not isinstance(summary, dict) or "step_s" not in summary:
        raise CheckFailed(f"return the profiler's summary (`prof.summary()`), got {type(summary).__name__}")
    for part in ("forward", "backward", "optimizer"):
        calls = [phase for what, phase in seen if what == part]
        if len(calls) != len(batches):
            raise CheckFailed(f"the {part} pass ran {len(calls)} times for {len(batches)} batches: train one "
                              "step per batch (iterate over all of them)")
        wrong = {phase for phase in calls if phase != part}
        if wrong == {None}:
            raise CheckFailed(f"the {part} pass ran outside any phase: wrap it in "
                              f"`with prof.phase(\"{part}\"):`")
        if wrong:
            raise CheckFailed(f"the {part} pass ran inside the phase {sorted(map(str, wrong))}: close that "
                              f"phase and open `prof.phase(\"{part}\")` for it, so each phase times one "
                              "thing")
    missing = [p for p in ("forward", "backward", "optimizer") if f"{p}_s" not in summary]
    if missing:
        raise CheckFailed(f"the summary has no {missing} phase(s): was it made by the same profiler?")
    passed("ex01_phases", "forward, backward and optimizer each timed in their own phase")


def ex01_mfu(fn) -> None:
    """Compare the learner's `fn(samples_per_s, flops_per_sample, peak_flops)` with achieved / peak."""
    cases = [(421.0, 3 * 1.5e11, 312e12), (2000.0, 5.6e8, 989.5e12), (150.0, 2.0e6, 5.0e10)]
    for samples_per_s, flops, peak in cases:
        want = samples_per_s * flops / peak
        got = fn(samples_per_s, flops, peak)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise CheckFailed(f"return a number, got {type(got).__name__}") from None
        if abs(got - want) <= 1e-9 * max(1.0, want):
            continue
        ctx = f"for {samples_per_s} samples/s, {flops:.3g} FLOPs per sample and a {peak:.3g} FLOP/s peak"
        if abs(got - 100 * want) <= 1e-6 * 100 * want:
            raise CheckFailed(f"{ctx} you returned {got:.4g}, the MFU in percent: return the fraction "
                              f"{want:.4g}")
        if want and abs(got - 1 / want) <= 1e-6 / want:
            raise CheckFailed(f"{ctx} you returned {got:.4g} = peak / achieved: MFU is achieved / peak = "
                              f"{want:.4g}")
        if abs(got - want / 3) <= 1e-9 * want or abs(got - 3 * want) <= 1e-9 * want:
            raise CheckFailed(f"{ctx} you returned {got:.4g}, off by 3: flops_per_sample already counts the "
                              f"forward and backward passes, use it as it is ({want:.4g})")
        raise CheckFailed(f"{ctx} expected MFU {want:.4g}, got {got:.4g}")
    passed("ex01_mfu", "MFU = samples/s x FLOPs per sample / peak FLOP/s")

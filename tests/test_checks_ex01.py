"""Exercise checks of lesson 01: the solutions pass, plausible wrong answers fail with a useful message."""

import pytest
import torch

from hepml_kit import checks as check
from hepml_kit.checks import CheckFailed
from hepml_kit.profile import StepProfiler


def profile_steps(model, batches, loss_fn, optimizer):
    prof = StepProfiler(warmup_steps=1)
    for batch in prof.iterate(batches):
        with prof.phase("forward"):
            loss = loss_fn(model, batch)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
    return prof.summary()


def profile_steps_backward_in_forward(model, batches, loss_fn, optimizer):
    prof = StepProfiler(warmup_steps=1)
    for batch in prof.iterate(batches):
        with prof.phase("forward"):
            loss = loss_fn(model, batch)
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad()
    return prof.summary()


def profile_steps_no_optimizer_phase(model, batches, loss_fn, optimizer):
    prof = StepProfiler(warmup_steps=1)
    for batch in prof.iterate(batches):
        with prof.phase("forward"):
            loss = loss_fn(model, batch)
        with prof.phase("backward"):
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return prof.summary()


def profile_steps_first_batch_only(model, batches, loss_fn, optimizer):
    prof = StepProfiler(warmup_steps=0)
    for batch in prof.iterate(batches[:1]):
        with prof.phase("forward"):
            loss = loss_fn(model, batch)
        with prof.phase("backward"):
            loss.backward()
        with prof.phase("optimizer"):
            optimizer.step()
    return prof.summary()


def test_phases_solution_passes(capsys):
    check.ex01_phases(profile_steps)
    assert "ex01_phases passed" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,message", [
    (profile_steps_backward_in_forward, r"backward pass ran inside the phase \['forward'\]"),
    (profile_steps_no_optimizer_phase, r"optimizer pass ran outside any phase"),
    (profile_steps_first_batch_only, r"ran 1 times for 4 batches"),
    (lambda model, batches, loss_fn, optimizer: None, r"return the profiler's summary"),
])
def test_phases_wrong_answers_fail_helpfully(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex01_phases(wrong)


def test_phase_spy_is_removed_after_the_check():
    from hepml_kit.checks import ex01

    check.ex01_phases(profile_steps)
    prof = StepProfiler(samples_per_step=1)
    with prof.step(), prof.phase("forward"):
        assert ex01._open_phase[0] is None  # the real begin_phase is back


def model_flops_utilisation(samples_per_s, flops_per_sample, peak_flops):
    return samples_per_s * flops_per_sample / peak_flops


def test_mfu_solution_passes_and_matches_the_profiler(capsys):
    check.ex01_mfu(model_flops_utilisation)
    assert "ex01_mfu passed" in capsys.readouterr().out
    prof = StepProfiler(samples_per_step=4, flops_per_sample=1e6, peak_flops=1e9, warmup_steps=0)
    with prof.step(), prof.phase("forward"):
        torch.ones(3).sum()
    s = prof.summary()
    assert model_flops_utilisation(s["samples_per_s"], 1e6, 1e9) == pytest.approx(s["mfu"])


@pytest.mark.parametrize("wrong,message", [
    (lambda s, f, p: 100 * s * f / p, "in percent"),
    (lambda s, f, p: p / (s * f), "peak / achieved"),
    (lambda s, f, p: s * f / 3 / p, "off by 3"),
    (lambda s, f, p: s / p, "expected MFU"),
    (lambda s, f, p: "high", "return a number"),
])
def test_mfu_wrong_answers_fail_helpfully(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex01_mfu(wrong)


def test_hints_exist_without_the_solution(capsys):
    check.hint("ex01")
    out = capsys.readouterr().out
    assert "ex01_phases" in out and "ex01_mfu" in out

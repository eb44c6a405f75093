"""The step profiler as a Lightning callback: same phases, same summary, no change to the LightningModule.

    cb = ProfilerCallback(flops_per_sample=tb.flops_per_sample(cfg), unit="jets")
    L.Trainer(callbacks=[cb], ...).fit(module, loader)
    cb.summary        # the dict of `StepProfiler.summary()`, gathered across ranks; cb.report() prints it

Lightning calls, per batch with automatic optimisation: ``on_train_batch_start`` → training_step →
``on_before_backward`` → backward → ``on_after_backward`` → ``on_before_optimizer_step`` →
optimizer.step → ``on_train_batch_end``; it fetches the next batch between ``on_train_batch_end`` and the
next ``on_train_batch_start``. The phases are those intervals: data, forward, backward, optimizer (the time
between backward and the optimizer hook, e.g. gradient clipping, is "other"). Under DDP the exposed
all-reduce stays inside "backward" (Lightning owns the DDP wrapper; see `StepProfiler` for the hook).

Taught in curriculum/01_single_device.
"""

from __future__ import annotations

import lightning as L

from hepml_kit.profile.step import StepProfiler, count_samples

__all__ = ["ProfilerCallback"]


class ProfilerCallback(L.Callback):
    """Profile every training step of a `lightning.Trainer` fit; keyword arguments go to `StepProfiler`.

    After ``fit``: ``summary`` (dict), ``table()`` and ``report()``. ``verbose`` prints the report on rank 0.
    """

    def __init__(self, verbose: bool = True, **profiler_kwargs):
        super().__init__()
        self.verbose, self.profiler_kwargs = verbose, profiler_kwargs
        self.profiler: StepProfiler | None = None
        self.summary: dict | None = None

    def on_train_start(self, trainer, pl_module):
        kwargs = dict(self.profiler_kwargs)
        kwargs.setdefault("device", pl_module.device)
        self.profiler = StepProfiler(**kwargs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        prof = self.profiler
        if prof._open is None:  # first batch of an epoch: its data wait was not seen
            prof.begin_step()
        prof.end_phase()
        spec = prof.samples_per_step
        prof._open.samples = spec(batch) if callable(spec) else (spec or count_samples(batch))
        prof.begin_phase("forward")

    def on_before_backward(self, trainer, pl_module, loss):
        self.profiler.end_phase()
        self.profiler.begin_phase("backward")

    def on_after_backward(self, trainer, pl_module):
        self.profiler.end_phase()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.profiler.end_phase()
        self.profiler.begin_phase("optimizer")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        prof = self.profiler
        prof.end_step()
        prof.begin_step()  # the next step starts with waiting for its batch
        prof.begin_phase("data")

    def on_train_epoch_end(self, trainer, pl_module):
        self.profiler.abort_step()

    def on_train_end(self, trainer, pl_module):
        self.profiler.abort_step()
        self.summary = self.profiler.summary()  # collective: every rank reaches on_train_end
        if self.verbose and trainer.is_global_zero:
            self.profiler.report(self.summary)

    def table(self):
        return self.profiler.table(self.summary)

    def report(self) -> str:
        return self.profiler.report(self.summary)

"""The testbeds' LightningModule: ``build(cfg)`` trained with the model file's ``loss``, made on first use.

Importing lightning takes seconds, so a model file does not import it: `LazyLightningClass` makes the
class the first time it is asked for. A class made inside a function cannot be pickled by name unless
its module hands it out, so the class is named after the model file (``__module__``, ``__qualname__``)
and the file gets a module-level ``__getattr__`` (PEP 562) that returns it: pickle and cloudpickle
(Lightning's ``ddp_spawn``, ipyparallel) then send instances by reference. In a model file::

    _LIGHTNING = LazyLightningClass(__name__, "JetTaggerLightning", build=build, loss=loss,
                                    samples_in=lambda batch: int(batch["tracks"].shape[0]))

    def lightning(cfg, lr=1e-3):
        return _LIGHTNING.cls()(cfg, lr)

    __getattr__ = _LIGHTNING.module_getattr

The module holds ``self.model = build(cfg)`` and forwards to it; ``training_step`` logs ``train_loss``
(progress bar) and ``validation_step`` ``val_loss`` (averaged over ranks), weighted by ``samples_in(batch)``
samples; ``configure_optimizers`` returns ``make_optimizer(model, cfg, lr)``, AdamW by default (as
`Testbed.optimizer`). A model trained otherwise (the GAN: two optimisers, manual steps) writes its own
class body and hands it to `LazyClass`, which does the naming and the ``__getattr__`` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["LazyClass", "LazyLightningClass"]


def _adamw(model: nn.Module, cfg: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr)


class LazyClass:
    """The class ``<module>.<name>`` made by ``make()`` at the first `cls()` call, named so pickle finds it.

    Args:
        module: the model file's ``__name__``; the class claims it as its ``__module__``.
        name: the class name, which the model file's ``__getattr__ = self.module_getattr`` answers to.
        make: ``make() -> type``, e.g. a function that imports lightning and defines the class.
    """

    def __init__(self, module: str, name: str, make: Callable[[], type]):
        self.module, self.name, self.make = module, name, make
        self._cls: type | None = None

    def cls(self) -> type:
        """The class (one per process: pickle checks that ``<module>.<name>`` is this very object)."""
        if self._cls is None:
            made = self.make()
            made.__module__ = self.module
            made.__name__ = made.__qualname__ = self.name
            self._cls = made
        return self._cls

    def module_getattr(self, attr: str):
        """The model file's ``__getattr__``: hands out the class by name, so pickle can find it."""
        if attr == self.name:
            return self.cls()
        raise AttributeError(f"module {self.module!r} has no attribute {attr!r}")


class LazyLightningClass(LazyClass):
    """The LightningModule class ``<module>.<name>`` of one testbed model, made by the first `cls()` call.

    Args:
        module, name: as for `LazyClass`.
        build: ``build(cfg) -> nn.Module``.
        loss: ``loss(model, batch) -> scalar Tensor``.
        samples_in: ``samples_in(batch) -> int``, the batch size Lightning weights logged means by.
        make_optimizer: ``make_optimizer(model, cfg, lr) -> optimizer``; default AdamW.
    """

    def __init__(
        self,
        module: str,
        name: str,
        *,
        build: Callable[[Any], nn.Module],
        loss: Callable[[nn.Module, dict], torch.Tensor],
        samples_in: Callable[[dict], int],
        make_optimizer: Callable[[nn.Module, Any, float], Any] | None = None,
    ):
        super().__init__(module, name, make=self._make_testbed_class)
        self.build, self.loss, self.samples_in = build, loss, samples_in
        self.make_optimizer = make_optimizer or _adamw

    def _make_testbed_class(self) -> type:
        import lightning as L

        build, loss, samples_in, make_optimizer = self.build, self.loss, self.samples_in, self.make_optimizer

        class TestbedLightning(L.LightningModule):
            def __init__(self, cfg, lr: float = 1e-3):
                super().__init__()
                self.save_hyperparameters()
                self.cfg, self.lr, self.model = cfg, lr, build(cfg)

            def forward(self, *inputs):
                return self.model(*inputs)

            def training_step(self, batch, batch_idx):
                value = loss(self.model, batch)
                self.log("train_loss", value, prog_bar=True, batch_size=samples_in(batch))
                return value

            def validation_step(self, batch, batch_idx):
                self.log("val_loss", loss(self.model, batch), batch_size=samples_in(batch), sync_dist=True)

            def configure_optimizers(self):
                return make_optimizer(self.model, self.cfg, self.lr)

        TestbedLightning.__doc__ = f"`{self.module}.build(cfg)` trained with its `loss` under Lightning."
        return TestbedLightning

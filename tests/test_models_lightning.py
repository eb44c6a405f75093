"""The testbeds' LightningModules made by `hepml_kit.models._lightning` (`LazyLightningClass`, and
`LazyClass` for the GAN's own class): found by name,
picklable (plain pickle for ddp_spawn, cloudpickle for ipyparallel) also in a fresh interpreter, and the
model's own optimiser and logged metric names."""

import importlib
import pickle
import subprocess
import sys

import cloudpickle
import pytest
import torch

from hepml_kit import models

pytest.importorskip("lightning")

# testbed -> (class name, optimiser class)
FACTORY_MADE = {
    "jet_transformer": ("JetTaggerLightning", torch.optim.AdamW),
    "tracking_gnn": ("TrackingGNNModule", torch.optim.AdamW),
    "waveform_vae": ("WaveformVAELightning", torch.optim.AdamW),
    "cosmo_unet": ("UNetLightning", torch.optim.Adam),
}
# every testbed's class name: the GAN (two optimisers, manual steps) writes its own body
CLASS_NAMES = {**{name: cls for name, (cls, _) in FACTORY_MADE.items()}, "calo_gan": "CaloGANLightning"}


def _module(name: str, lr: float = 1e-3):
    tb = models.get(name)
    return tb.lightning(tb.config("tiny"), lr)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_class_is_found_by_its_module_and_qualname(name):
    cls = type(_module(name))
    module = importlib.import_module(cls.__module__)
    assert cls.__module__ == models.MODEL_MODULES[name]
    assert cls.__name__ == cls.__qualname__ == CLASS_NAMES[name]
    assert getattr(module, cls.__qualname__) is cls  # the module's __getattr__ hands out this very class
    assert type(_module(name)) is cls  # made once per process
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchLightning'"):
        _ = module.NoSuchLightning


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_instance_survives_pickle_and_cloudpickle(name):
    torch.manual_seed(0)
    module = _module(name, lr=3e-3)
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(module))
        assert type(copy) is type(module)  # by reference: a class pickled by value would be a new class
        assert copy.lr == 3e-3 and copy.cfg == module.cfg and copy.hparams["cfg"] == module.cfg
        for (k, a), (k2, b) in zip(module.state_dict().items(), copy.state_dict().items(), strict=True):
            assert k == k2
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", FACTORY_MADE)
def test_optimizer_is_the_models_own(name):
    module = _module(name, lr=3e-3)
    opt = module.configure_optimizers()
    assert type(opt) is FACTORY_MADE[name][1]
    assert opt.param_groups[0]["lr"] == 3e-3
    assert [p for g in opt.param_groups for p in g["params"]] == list(module.model.parameters())


def test_pickled_instances_load_in_a_fresh_interpreter(tmp_path):
    """What ddp_spawn does: the child has not made the class (nor imported lightning); unpickling makes it."""
    paths = []
    for name in CLASS_NAMES:
        paths.append(tmp_path / f"{name}.pkl")
        paths[-1].write_bytes(pickle.dumps(_module(name)))
    script = (
        "import pickle, sys\n"
        f"for name in {list(models.MODEL_MODULES.values())!r}:\n"
        "    __import__(name)\n"
        "assert 'lightning' not in sys.modules, 'importing a model file imported lightning'\n"
        "for path in sys.argv[1:]:\n"
        "    m = pickle.load(open(path, 'rb'))\n"
        "    print(type(m).__module__, type(m).__qualname__, sum(p.numel() for p in m.parameters()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert len(out) == len(CLASS_NAMES), proc.stdout
    for line, name in zip(out, CLASS_NAMES):
        module = _module(name)
        assert line.split() == [models.MODEL_MODULES[name], CLASS_NAMES[name],
                                str(sum(p.numel() for p in module.parameters()))]


def test_fit_logs_train_and_val_loss():
    import lightning as L

    tb = models.get("waveform_vae")
    cfg = tb.config("tiny")
    loader = torch.utils.data.DataLoader(list(tb.batches(tb.generate(cfg, 32, 1), 16)), batch_size=None)
    module = tb.lightning(cfg, 1e-3)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert {"train_loss", "val_loss"} <= set(trainer.callback_metrics)
    assert trainer.progress_bar_metrics.keys() == {"train_loss"}
    with torch.no_grad():
        module.eval()  # z = mu: deterministic
        x = next(iter(loader))["waveform"]
        torch.testing.assert_close(module(x)[0], module.model(x)[0])  # forward is the model's

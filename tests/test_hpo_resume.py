"""Nothing lost: a study whose process is SIGKILLed mid-trial resumes without losing or repeating trials.

The resumed sampler continues instead of replaying its random stream: with the random sampler and with TPE
in its start-up phase, a replay would propose the killed run's first parameter sets again.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from hepml_kit.hpo.optuna_backend import StudyBusy, open_storage, open_study, run_study  # noqa: E402

# The same spec is built in the killed subprocess and here (a resumed study must match the stored one).
SPEC_SOURCE = """
from hepml_kit.hpo.objective import TestbedObjective
from hepml_kit.hpo.optuna_backend import StudySpec
from hepml_kit.hpo.space import Float, SearchSpace

def make_spec(path, sampler="tpe", n_startup_trials=3):
    objective = TestbedObjective("waveform_vae", "auc", events=256, val_events=128, epochs=4, batch_size=32)
    space = SearchSpace({"lr": Float(1e-3, 3e-2, log=True), "beta": Float(0.1, 1.0)})
    return StudySpec("resume", space, objective, sampler=sampler, n_startup_trials=n_startup_trials,
                     storage=path)
"""
N_TRIALS = 5


def make_spec(path, *setup):
    namespace = {}
    exec(SPEC_SOURCE, namespace)
    return namespace["make_spec"](path, *setup)


def _trials(path):
    storage = open_storage(path)
    if not storage.get_all_studies():
        return []
    return optuna.load_study(study_name="resume", storage=storage).get_trials(deepcopy=False)


# (sampler, n_startup_trials): TPE past its start-up at the resume, random search, TPE still in start-up
@pytest.mark.parametrize("setup", [("tpe", 3), ("random", 3), ("tpe", 10)],
                         ids=["tpe", "random", "tpe-startup"])
def test_killed_study_resumes_without_losing_or_repeating_trials(tmp_path, setup):
    path = str(tmp_path / "study.log")
    script = SPEC_SOURCE + (
        "\nimport torch, optuna\ntorch.set_num_threads(1)\n"
        "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
        "from hepml_kit.hpo.optuna_backend import run_study\n"
        f"run_study(make_spec({path!r}, *{setup!r}), n_trials={N_TRIALS})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def wait_for(finished):  # until `finished` trials are done and one is inside its epochs
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                trials = _trials(path) if os.path.exists(path) else []
                done = [t for t in trials if t.state.name == "COMPLETE"]
                if len(done) >= finished and any(t.state.name == "RUNNING"
                                                 and t.intermediate_values for t in trials):
                    return
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                time.sleep(0.05)
            pytest.fail(f"the study never reached {finished} finished trials and a running one")

        wait_for(1)
        with pytest.raises(StudyBusy, match=f"pid {proc.pid}"):  # resuming a live study is refused
            open_study(make_spec(path, *setup))
        wait_for(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    before = _trials(path)
    finished_before = {t.number: (t.params, t.value) for t in before if t.state.name == "COMPLETE"}
    stale = [t for t in before if t.state.name == "RUNNING"]
    assert len(stale) == 1 and len(finished_before) >= 2

    study = run_study(make_spec(path, *setup), n_trials=N_TRIALS)  # resume

    after = {t.number: t for t in study.get_trials()}
    for number, (params, value) in finished_before.items():  # nothing lost
        assert after[number].state.name == "COMPLETE" and after[number].value == value
        assert after[number].params == params
    assert after[stale[0].number].state.name == "FAIL"  # the killed trial is marked failed ...
    retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == stale[0].number]
    assert len(retries) == 1 and retries[0].params == stale[0].params  # ... and retried with its parameters
    assert retries[0].state.name == "COMPLETE"
    complete = [t for t in after.values() if t.state.name == "COMPLETE"]
    assert len(complete) == N_TRIALS  # the budget counts the trials from before the kill
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == N_TRIALS  # none repeated
    new = [t for t in after.values() if t.number > max(x.number for x in before) and t not in retries]
    assert new, "the resumed run proposed no new trial"
    earlier = {json.dumps(t.params, sort_keys=True) for t in before}
    assert not earlier & {json.dumps(t.params, sort_keys=True) for t in new}  # the sampler did not replay

    again = run_study(make_spec(path, *setup), n_trials=N_TRIALS)  # a finished study has nothing left to do
    assert len(again.trials) == len(after)

"""Exercise checks of lesson 08: the solutions pass, plausible wrong answers fail with a useful message."""

import numpy as np
import pytest

from hepml_kit import checks as check
from hepml_kit.checks import CheckFailed


def pad_jets(jets, max_tracks):
    n_features = jets[0].shape[1]
    tracks = np.zeros((len(jets), max_tracks, n_features), np.float32)
    mask = np.zeros((len(jets), max_tracks), bool)
    for i, jet in enumerate(jets):
        if len(jet) > max_tracks:
            raise ValueError(f"jet {i} has {len(jet)} tracks > {max_tracks}")
        tracks[i, : len(jet)] = jet
        mask[i, : len(jet)] = True
    return {"tracks": tracks, "mask": mask}


def summarize(latencies_s, wall_s, batch_size):
    rps = len(latencies_s) / wall_s
    return {
        "p50_ms": np.percentile(latencies_s, 50) * 1e3,
        "p95_ms": np.percentile(latencies_s, 95) * 1e3,
        "p99_ms": np.percentile(latencies_s, 99) * 1e3,
        "throughput_rps": rps,
        "samples_per_s": rps * batch_size,
    }


def test_solutions_pass(capsys):
    check.ex08_pad_jets(pad_jets)
    check.ex08_latency_summary(summarize)
    assert capsys.readouterr().out.count("passed") == 2


def _inverted_mask(jets, max_tracks):
    out = pad_jets(jets, max_tracks)
    return {"tracks": out["tracks"], "mask": ~out["mask"]}


def _float64(jets, max_tracks):
    out = pad_jets(jets, max_tracks)
    return {"tracks": out["tracks"].astype(np.float64), "mask": out["mask"]}


def _truncates(jets, max_tracks):
    return pad_jets([j[:max_tracks] for j in jets], max_tracks)


def _right_aligned(jets, max_tracks):
    out = pad_jets(jets, max_tracks)
    return {"tracks": out["tracks"][:, ::-1], "mask": out["mask"][:, ::-1]}


def _padding_filled_with_ones(jets, max_tracks):
    out = pad_jets(jets, max_tracks)
    out["tracks"][~out["mask"]] = 1.0
    return out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_inverted_mask, "inverted"),
        (_float64, "float32"),
        (_truncates, "must raise ValueError"),
        (_right_aligned, "real tracks first"),
        (_padding_filled_with_ones, "zeros"),
        (lambda jets, t: (pad_jets(jets, t)["tracks"], pad_jets(jets, t)["mask"]), "dict with keys"),
    ],
)
def test_wrong_padding_fails_helpfully(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex08_pad_jets(wrong)


def _mean_for_median(lat, wall, b):
    out = summarize(lat, wall, b)
    out["p50_ms"] = lat.mean() * 1e3
    return out


def _seconds(lat, wall, b):
    out = summarize(lat, wall, b)
    return {**out, **{k: out[k] / 1e3 for k in ("p50_ms", "p95_ms", "p99_ms")}}


def _one_over_latency(lat, wall, b):
    return {**summarize(lat, wall, b), "throughput_rps": 1 / lat.mean()}


def _no_batch(lat, wall, b):
    out = summarize(lat, wall, b)
    return {**out, "samples_per_s": out["throughput_rps"]}


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_mean_for_median, "the mean"),
        (_seconds, "seconds"),
        (_one_over_latency, "1 / mean latency"),
        (_no_batch, "batch_size"),
        (lambda lat, wall, b: {"p50_ms": 1.0}, "missing"),
    ],
)
def test_wrong_summary_fails_helpfully(wrong, message):
    with pytest.raises(CheckFailed, match=message):
        check.ex08_latency_summary(wrong)


def test_hints_exist_and_do_not_give_the_answer(capsys):
    check.hint("ex08")
    out = capsys.readouterr().out
    assert "ex08_pad_jets" in out and "ex08_latency_summary" in out

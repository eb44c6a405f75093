"""Checks for curriculum/08_inference_service's exercises: encode variable-size jets, summarise a load test.

``ex08_pad_jets(pad_jets)``: ``pad_jets(jets, max_tracks) -> {"tracks": [B, T, F] float32, "mask": [B, T]
bool}`` turns a list of per-jet track arrays ``[n_i, F]`` into the fixed-shape request Triton can batch:
tracks zero-padded to T = max_tracks (real tracks first, in order), mask True for real tracks; a jet with more
than max_tracks tracks is refused with a ValueError before anything is sent.
``ex08_latency_summary(summarize)``: ``summarize(latencies_s, wall_s, batch_size) -> dict`` with
``p50_ms, p95_ms, p99_ms`` (percentiles of the per-request latencies, in milliseconds), ``throughput_rps``
(requests completed per second of wall time) and ``samples_per_s``.
"""

from __future__ import annotations

import numpy as np

from hepml_kit.checks import CheckFailed, passed

__all__ = ["HINTS", "ex08_latency_summary", "ex08_pad_jets"]

HINTS = {
    "ex08_pad_jets": "Start from `tracks = np.zeros((len(jets), max_tracks, F), np.float32)` and "
    "`mask = np.zeros((len(jets), max_tracks), bool)`; for jet i with n tracks, copy them into "
    "`tracks[i, :n]` and set `mask[i, :n] = True`. Check `n > max_tracks` first and raise ValueError.",
    "ex08_latency_summary": "Percentiles: `np.percentile(latencies_s, 50) * 1e3` (and 95, 99). With several "
    "clients in flight, throughput is NOT 1 / mean latency: it is the number of requests divided by the wall "
    "time of the whole test. Each request carries `batch_size` samples.",
}

_F, _T = 5, 6


def _jets(rng) -> list[np.ndarray]:
    return [rng.normal(size=(n, _F)) for n in (3, 0, _T, 1)]  # float64 on purpose: the encoder converts


def _reference(jets, max_tracks):
    from hepml_kit.serve.encoding import JetEncoding

    return JetEncoding(max_tracks=max_tracks, track_features=_F).encode(jets)


def ex08_pad_jets(pad_jets) -> None:
    rng = np.random.default_rng(8)
    jets = _jets(rng)
    copies = [j.copy() for j in jets]
    out = pad_jets(jets, _T)
    want = _reference(jets, _T)
    if not isinstance(out, dict) or set(out) != {"tracks", "mask"}:
        raise CheckFailed(
            f"return a dict with keys 'tracks' and 'mask' (the model's input names), got "
            f"{sorted(out) if isinstance(out, dict) else type(out).__name__}"
        )
    tracks, mask = np.asarray(out["tracks"]), np.asarray(out["mask"])
    if tracks.shape != want["tracks"].shape or mask.shape != want["mask"].shape:
        raise CheckFailed(
            f"for {len(jets)} jets with {_F} features and max_tracks={_T} expected tracks "
            f"{list(want['tracks'].shape)} and mask {list(want['mask'].shape)}, got "
            f"{list(tracks.shape)} and {list(mask.shape)}"
        )
    if tracks.dtype != np.float32:
        raise CheckFailed(
            f"tracks must be float32 (the model's TYPE_FP32 input; Triton refuses {tracks.dtype})"
        )
    if mask.dtype != np.bool_:
        raise CheckFailed(f"mask must be bool (TYPE_BOOL), got {mask.dtype}")
    if np.array_equal(mask, ~want["mask"]):
        raise CheckFailed("the mask is inverted: True must mark a real track, False padding")
    if not np.array_equal(mask, want["mask"]):
        raise CheckFailed(
            f"mask of jet sizes {[len(j) for j in jets]} should be {want['mask'].astype(int).tolist()}, "
            f"got {mask.astype(int).tolist()} (real tracks first)"
        )
    if np.any(tracks[~want["mask"]] != 0):
        raise CheckFailed("padding slots must hold zeros")
    if not np.allclose(tracks, want["tracks"], atol=1e-6):
        raise CheckFailed("the real tracks are not where they belong: jet i's track k goes to tracks[i, k]")
    if any(not np.array_equal(a, b) for a, b in zip(jets, copies)):
        raise CheckFailed("pad_jets changed the jets it was given")
    try:
        pad_jets([rng.normal(size=(_T + 2, _F))], _T)
    except ValueError:
        pass
    except Exception as err:  # noqa: BLE001 - tell the learner what was raised instead
        raise CheckFailed(
            f"a jet with too many tracks should raise ValueError, got {type(err).__name__}: {err}"
        ) from err
    else:
        raise CheckFailed(
            f"a jet with {_T + 2} tracks and max_tracks={_T} must raise ValueError (silently "
            "dropping tracks would change the physics)"
        )
    passed("ex08_pad_jets", f"{len(jets)} jets of {[len(j) for j in jets]} tracks -> {list(tracks.shape)}")


def ex08_latency_summary(summarize) -> None:
    rng = np.random.default_rng(80)
    latencies = rng.lognormal(mean=np.log(4e-3), sigma=0.6, size=4000)  # skewed, like real latencies
    wall_s, batch = 1.25, 8  # 8 clients in flight: throughput >> 1 / mean latency
    out = summarize(latencies, wall_s, batch)
    keys = {"p50_ms", "p95_ms", "p99_ms", "throughput_rps", "samples_per_s"}
    if not isinstance(out, dict) or not keys <= set(out):
        missing = sorted(keys - set(out)) if isinstance(out, dict) else sorted(keys)
        raise CheckFailed(f"return a dict with {sorted(keys)}; missing {missing}")
    for q in (50, 95, 99):
        want, got = np.percentile(latencies, q) * 1e3, float(out[f"p{q}_ms"])
        if np.isclose(got, want / 1e3, rtol=0.02):
            raise CheckFailed(f"p{q}_ms looks like seconds ({got:.4g}); multiply by 1000")
        if q == 50 and np.isclose(got, latencies.mean() * 1e3, rtol=0.02):
            raise CheckFailed("p50_ms is the mean; the median is the 50th percentile (latencies are skewed)")
        if not np.isclose(got, want, rtol=0.02):
            raise CheckFailed(
                f"p{q}_ms should be {want:.4g} ms (np.percentile of the latencies), got {got:.4g}"
            )
    rps = len(latencies) / wall_s
    got = float(out["throughput_rps"])
    if np.isclose(got, 1 / latencies.mean(), rtol=0.02):
        raise CheckFailed(
            "throughput_rps is 1 / mean latency: true for one client, but several requests are "
            "in flight at once; divide the number of requests by the wall time"
        )
    if not np.isclose(got, rps, rtol=1e-6):
        raise CheckFailed(
            f"throughput_rps should be {rps:.1f} ({len(latencies)} requests in {wall_s} s), got {got:.4g}"
        )
    if not np.isclose(float(out["samples_per_s"]), rps * batch, rtol=1e-6):
        raise CheckFailed(
            f"samples_per_s should be throughput_rps x batch_size = {rps * batch:.1f}, "
            f"got {float(out['samples_per_s']):.4g}"
        )
    passed("ex08_latency_summary", f"p50 {out['p50_ms']:.2f} ms, p99 {out['p99_ms']:.2f} ms, {rps:.0f} req/s")

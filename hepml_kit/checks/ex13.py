"""Checks for curriculum/13_your_model's exercise: pad jets' tracks into a batch; a Deep Sets tagger that does
not
care about the order of the tracks or about what sits in the padding (Zaheer et al., arXiv:1703.06114)."""

from __future__ import annotations

import numpy as np
import torch

from hepml_kit.checks import CheckFailed, call, passed

__all__ = ["HINTS", "ex13_deep_sets", "ex13_pad_tracks"]

HINTS = {
    "ex13_pad_tracks": "Make zeros (B, max_tracks, F) and a False mask (B, max_tracks); "
                       "for jet i copy its first "
    "min(n_i, max_tracks) tracks into padded[i, :n] and set mask[i, :n] = True. A jet with no tracks is all "
    "padding. Return float32 and bool tensors.",
    "ex13_deep_sets": "phi(tracks) is (B, T, H); multiply by mask.unsqueeze(-1) (as "
                      "floats) so padded tracks add "
    "nothing, sum over dim 1 (divide by the number of real tracks, clamped to >= 1, for "
    "a mean), then rho(...). Never let a padded entry reach the sum: a masked sum is what makes the output "
    "order- and padding-blind.",
}



def ex13_pad_tracks(fn) -> None:
    """`fn(rows, max_tracks) -> (padded, mask)`: zero padding, a True mask on real tracks, long jets cut."""
    rng = np.random.default_rng(13)
    rows = [rng.normal(size=(n, 3)).astype(np.float32) for n in (2, 0, 5, 7)]
    got = call(fn, rows, 5, show_args=False)
    if not isinstance(got, tuple) or len(got) != 2:
        raise CheckFailed("return a pair (padded, mask)")
    padded, mask = (torch.as_tensor(t) for t in got)
    if tuple(padded.shape) != (4, 5, 3) or tuple(mask.shape) != (4, 5):
        raise CheckFailed(f"shapes {tuple(padded.shape)}, {tuple(mask.shape)}; want (4, 5, "
                          "3) and (4, 5) for 4 jets, max_tracks=5, 3 features")
    if mask.dtype != torch.bool or padded.dtype != torch.float32:
        raise CheckFailed(f"dtypes {padded.dtype}, {mask.dtype}; want torch.float32 and torch.bool")
    if mask.sum(1).tolist() != [2, 0, 5, 5]:
        raise CheckFailed(f"real tracks per jet {mask.sum(1).tolist()}; want [2, 0, 5, 5] "
                          "(the 7-track jet cut at 5)")
    for i, row in enumerate(rows):
        n = min(len(row), 5)
        if not torch.equal(padded[i, :n], torch.from_numpy(row[:n])):
            raise CheckFailed(f"jet {i}: its first {n} tracks are not where they belong (padded[{i}, :{n}])")
        if padded[i, n:].abs().sum() != 0:
            raise CheckFailed(f"jet {i}: the padding beyond its {n} tracks is not zero")
    passed("ex13_pad_tracks", "zero-padded, masked, long jets cut")


def ex13_deep_sets(model_cls) -> None:
    """`model_cls()(tracks, mask) -> logits (B, 2)`, unchanged by permuting real tracks or by padding
    values."""
    torch.manual_seed(0)
    model = call(model_cls, show_args=False)
    model.eval()
    g = torch.Generator().manual_seed(1)
    tracks = torch.randn(6, 8, 3, generator=g)
    mask = torch.arange(8)[None, :] < torch.tensor([[1], [3], [8], [5], [2], [6]])
    with torch.no_grad():
        out = call(model, tracks * mask[..., None], mask, show_args=False)
        if not torch.is_tensor(out) or tuple(out.shape) != (6, 2):
            raise CheckFailed(f"output {getattr(out, 'shape', type(out).__name__)}; "
                              "want logits of shape (6, 2)")
        junk = torch.where(mask[..., None], tracks, 100 * torch.randn(6, 8, 3, generator=g))
        if not torch.allclose(call(model, junk, mask, show_args=False), out, atol=1e-5):
            raise CheckFailed("changing only the padded entries changed the output: "
                              "mask them out before summing")
        perm = torch.randperm(8, generator=g)
        if not torch.allclose(call(model, (tracks * mask[..., None])[:, perm],
                                    mask[:, perm], show_args=False), out, atol=1e-5):
            raise CheckFailed("reordering the tracks changed the output: pool with a "
                              "(masked) sum or mean over dim 1")
        if torch.allclose(out[0], out[2], atol=1e-6):
            raise CheckFailed("jets with different tracks give the same output: is "
                              "phi applied to the tracks?")
    passed("ex13_deep_sets", "permutation-invariant, blind to padding")

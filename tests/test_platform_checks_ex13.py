"""Exercise 13's checks pass the solution and fail the usual mistakes, each with a message saying what is
wrong."""

import pytest
from torch import nn

from hepml_kit import checks as check
from hepml_kit.checks import CheckFailed
from hepml_kit.models.user import pad_ragged


def good_pad(rows, max_tracks):
    return pad_ragged(rows, max_tracks)


def no_cut(rows, max_tracks):  # forgets to cut long jets
    return pad_ragged(rows, max(max_tracks, *(len(r) for r in rows)))


def int_mask(rows, max_tracks):
    padded, mask = pad_ragged(rows, max_tracks)
    return padded, mask.long()


def test_pad_tracks_check():
    check.ex13_pad_tracks(good_pad)
    with pytest.raises(CheckFailed, match="shapes"):
        check.ex13_pad_tracks(no_cut)
    with pytest.raises(CheckFailed, match="torch.bool"):
        check.ex13_pad_tracks(int_mask)
    with pytest.raises(NotImplementedError):
        check.ex13_pad_tracks(lambda rows, n: (_ for _ in ()).throw(NotImplementedError()))


class _Sets(nn.Module):
    def __init__(self, masked=True, pool="mean"):
        super().__init__()
        self.masked, self.pool = masked, pool
        self.phi = nn.Sequential(nn.Linear(3, 8), nn.ReLU())
        self.rho = nn.Linear(8, 2)

    def forward(self, tracks, mask):
        h = self.phi(tracks)
        if self.masked:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        if self.pool == "first":
            return self.rho(h[:, 0])
        return self.rho(h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1))


def test_deep_sets_check():
    check.ex13_deep_sets(_Sets)
    with pytest.raises(CheckFailed, match="padded entries"):
        check.ex13_deep_sets(lambda: _Sets(masked=False))
    with pytest.raises(CheckFailed, match="reordering the tracks"):
        check.ex13_deep_sets(lambda: _Sets(pool="first"))
    assert "masked sum" in check.all_hints()["ex13_deep_sets"]

"""The kit's one plotting style: mplhep's ROOT style, quiet font fallbacks, figures saved as PNG.

Every physicist's plot the kit draws (ROC and rejection curves, efficiency vs pT, shower profiles,
anomaly-score distributions, P(k) and r(k), scaling curves) goes through `style()`, and
`hepml-kit validate --plots DIR` writes them with `save`:

    with style():
        fig, ax = plt.subplots()
        ...
    save(fig, outdir, "roc")          # -> outdir/roc.png
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

__all__ = ["save", "style"]


@contextlib.contextmanager
def style(**overrides):
    """matplotlib style context: mplhep's ROOT style (plain matplotlib where mplhep is missing)."""
    import matplotlib.pyplot as plt

    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # the ROOT style names absent fonts
    try:
        import mplhep

        base = [mplhep.style.ROOT]
    except ImportError:
        base = ["default"]
    with plt.style.context([*base, {"font.size": 12, "legend.fontsize": 9, **overrides}]):
        yield


def save(fig, outdir: str | Path, name: str) -> Path:
    """Write `fig` as ``outdir/name.png`` (folder created), close it, return the path."""
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

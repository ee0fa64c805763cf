"""Matplotlib for files, not screens: the Agg backend and a figure rendered to PNG bytes.

Every picture cordfuse writes (QC, curves, box plots, histograms, the report) goes through here.
"""

from __future__ import annotations

import io


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed).

    Returns:
        The ``matplotlib.pyplot`` module.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, *, dpi: int = 100) -> bytes:
    """Render ``fig`` as PNG (on its own face colour) and close it.

    Args:
        fig: A matplotlib figure.
        dpi: Pixels per inch of the picture.

    Returns:
        The PNG file's bytes.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    pyplot().close(fig)
    return buffer.getvalue()

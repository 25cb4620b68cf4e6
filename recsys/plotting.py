"""Matplotlib figures as inline SVG text, for the HTML report and the benchmark summaries (no display needed)."""

from __future__ import annotations

import io


def figure_svg(fig) -> str:  # noqa: ANN001 - a matplotlib Figure
    """The figure as an `<svg ...>` element (no XML header, so it can be inlined in HTML); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]

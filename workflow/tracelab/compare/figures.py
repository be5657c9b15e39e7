"""The look every comparison figure shares, declared once.

- One colour, line style and marker per trace, fixed by the trace sheet's order (`trace_styles`),
  in every figure. Traces with the same label are often two recordings of the same traffic
  and draw the same curve: each later one of a label is drawn thinner and dashed on top of the
  earlier one, so that both stay visible.
- Legends have one level (`trace (label)`) and sit outside the axes (`legend_outside`).
- PNG bytes are reproducible: no software version or time in the file (`save`).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from tracelab.core.atomic import atomic_path  # noqa: E402
from tracelab.core.safe_text import figure_text  # noqa: E402

PNG_METADATA = {"Software": None}
DPI = 110
# A window feature's robustness class, declared or measured.
CLASS_COLOURS = {"behavioural": "#1b9e77", "artefact": "#d95f02"}
# The robustness experiment's measured classes: the declared ones and what too few windows leave.
MEASURED_COLOURS = {**CLASS_COLOURS, "undetermined": "#7570b3", "not measured": "#999999"}
# The n-th trace of a label: line style and width (a later trace draws inside an earlier one).
SAME_LABEL_LINES = [("-", 2.6), ((0, (4, 2)), 1.4), ((0, (1, 1.5)), 1.4), ((0, (6, 2, 1, 2)), 1.2)]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
# seaborn's colour-blind palette, reordered so that the first colours differ most (its fourth,
# vermillion, is hard to tell from its second, orange).
PALETTE_ORDER = [0, 1, 2, 4, 5, 6, 3, 8, 9, 7]


@dataclass(frozen=True)
class TraceStyle:
    """How one trace is drawn, in every figure."""

    legend: str          # `trace (label)`, safe for matplotlib text
    color: tuple
    linestyle: object
    linewidth: float
    marker: str

    @property
    def line(self) -> dict:
        return {"color": self.color, "linestyle": self.linestyle, "linewidth": self.linewidth}

    def handle(self, marker: bool = True) -> Line2D:
        """The trace's legend entry: its line, and its marker where points are drawn."""
        return Line2D([], [], label=self.legend, marker=self.marker if marker else None,
                      markersize=6, **self.line)

    def patch(self) -> Patch:
        """The trace's legend entry in a bar chart."""
        return Patch(facecolor=self.color, label=self.legend)


def trace_styles(traces: list[str], labels: dict[str, str]) -> dict[str, TraceStyle]:
    """Each trace's style, in the order of `traces` (the sheet's)."""
    colors = [sns.color_palette("colorblind")[i] for i in PALETTE_ORDER][:len(traces)] \
        if len(traces) <= len(PALETTE_ORDER) else sns.color_palette("husl", len(traces))
    seen_of_label: dict[str, int] = {}
    styles = {}
    for index, trace in enumerate(traces):
        label = labels.get(trace, trace)
        rank = seen_of_label.get(label, 0)
        seen_of_label[label] = rank + 1
        linestyle, linewidth = SAME_LABEL_LINES[min(rank, len(SAME_LABEL_LINES) - 1)]
        styles[trace] = TraceStyle(figure_text(f"{trace} ({label})"), tuple(colors[index]),
                                   linestyle, linewidth, MARKERS[index % len(MARKERS)])
    return styles


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **subplots):
    """A figure laid out so that a legend placed outside the axes is kept whole."""
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), layout="constrained",
                             squeeze=False, **subplots)
    return fig, axes


def legend_outside(fig, handles: list, title: str | None = None) -> None:
    """A one-level legend right of every axes, never over the data."""
    fig.legend(handles=handles, loc="outside right upper", title=title, frameon=False,
               fontsize=9, title_fontsize=9, alignment="left")


def grouped_bars(ax, shares: pd.DataFrame, styles: dict[str, TraceStyle]) -> None:
    """One group of bars per row of `shares` (a category), one bar per trace (a column), in
    the traces' colours; bars side by side, so equal values of two traces both show."""
    traces = [trace for trace in styles if trace in shares.columns]
    width = 0.8 / max(len(traces), 1)
    positions = np.arange(len(shares.index))
    for offset, trace in enumerate(traces):
        ax.bar(positions - 0.4 + width * (offset + 0.5), shares[trace].fillna(0).to_numpy(),
               width=width, color=styles[trace].color, label=styles[trace].legend)
    ax.set_xticks(positions, [figure_text(name) for name in shares.index])


def empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, figure_text(text), ha="center", va="center", transform=ax.transAxes)


def save(fig, path) -> None:
    # A constrained layout keeps every artist inside the figure; cropping to a tight box would
    # lay out and draw the figure once more.
    crop = None if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine) else "tight"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches=crop, metadata=PNG_METADATA)
    plt.close(fig)


def feature_set_colour(name: str) -> tuple:
    """A feature set of the robustness experiment ("behavioural (measured)", "all"): its
    class's colour, paler when the class is the declared one; near-black for all features.
    Never a trace's colour, so a feature set is not read as a trace."""
    base = np.array(matplotlib.colors.to_rgb(MEASURED_COLOURS.get(name.split(" ")[0],
                                                                  "#252525")))
    return tuple(base + (1 - base) * 0.5) if "(declared)" in name else tuple(base)


def set_theme() -> None:
    sns.set_theme(style="whitegrid", context="notebook")

"""The answer that leads the report's robustness section: one sentence and one figure, written
from the measured tables (classes.csv and transfer.csv), never by hand.

Which features transfer to a capture no detector saw, which do not, and how sure that is:
pooled leave-one-capture-out accuracy of the detectors trained on the measured behavioural
features, on the measured artefacts, and on all features, with their intervals. Where the
sheet cannot answer (one capture, one label, one capture a label), the sentence says so.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tracelab.compare.figures import empty_note, feature_set_colour, save
from tracelab.core.atomic import write_text
from tracelab.core.safe_text import figure_text, markdown_cell
from tracelab.robustness.tables import counted, number

SETS = ["behavioural (measured)", "artefact (measured)", "all"]
MODEL = "random forest"


def why_unanswerable(windows: pd.DataFrame) -> str:
    """Why the sheet cannot test transfer to an unseen capture ("" when it can); `traffic`
    names the capture (a trace and its other export format are one)."""
    per_label = windows.groupby("label")["traffic"].nunique()
    if windows["traffic"].nunique() < 2:
        return "The sheet holds one capture: there is no unseen capture to test a detector on."
    if len(per_label) < 2:
        return (f"Every capture is labelled {per_label.index[0]}: a detector has nothing to "
                f"tell apart.")
    if (per_label < 2).all():
        return ("Each label has one capture: leaving one out leaves its label unseen in "
                "training, so transfer to an unseen capture cannot be tested. Add a second "
                "capture of a label.")
    return ""


def _score(pooled: pd.DataFrame, feature_set: str) -> str:
    row = pooled.loc[feature_set]
    return (f"{number(row['accuracy'])} [{number(row['accuracy_low'])}, "
            f"{number(row['accuracy_high'])}]")


def sentence(pooled: pd.DataFrame, classes: pd.DataFrame, windows: pd.DataFrame,
             confidence: float) -> str:
    """The one sentence that answers the course's question from the tables."""
    why = why_unanswerable(windows)
    if why:
        return why
    pooled = pooled[pooled["model"] == MODEL].set_index("feature_set")
    measured = classes["measured"].value_counts()
    scored = pooled.loc["all", "captures"]
    undetermined = measured.get("undetermined", 0)
    return (f"On {counted(int(scored), 'capture')} each left out of training, a {MODEL} on the "
            f"{counted(measured.get('behavioural', 0), 'measured behavioural feature')} labels "
            f"{_score(pooled, 'behavioural (measured)')} of the unseen windows correctly, on "
            f"the {counted(measured.get('artefact', 0), 'measured artefact')} "
            f"{_score(pooled, 'artefact (measured)')}, on all features "
            f"{_score(pooled, 'all')} (accuracy [{confidence:.0%} interval]); "
            f"{counted(undetermined, 'feature')} "
            f"{'is' if undetermined == 1 else 'are'} undetermined (too few windows to tell).")


def answer_figure(pooled: pd.DataFrame, text: str, path) -> None:
    """Pooled leave-one-capture-out accuracy per feature set and model, the sentence above."""
    fig = Figure(figsize=(9, 4.2))
    ax = fig.subplots()
    fig.suptitle(figure_text("\n".join(textwrap.wrap(text, 110))), fontsize=9, x=0.02,
                 ha="left")
    pooled = pooled[pooled["feature_set"].isin(SETS)]
    if pooled["accuracy"].isna().all():
        ax.set_axis_off()
        empty_note(ax, "No detector could be scored on an unseen capture")
        save(fig, path)
        return
    models = list(dict.fromkeys(pooled["model"]))
    for k, feature_set in enumerate(SETS):
        part = pooled[pooled["feature_set"] == feature_set].set_index("model").reindex(models)
        at = np.arange(len(models)) + (k - 1) * 0.25
        ax.errorbar(part["accuracy"], at, xerr=[part["accuracy"] - part["accuracy_low"],
                                                part["accuracy_high"] - part["accuracy"]],
                    fmt="o", capsize=3, color=feature_set_colour(feature_set),
                    label=figure_text(f"{feature_set} ({int(part['features'].max())} features)"))
    ax.set_yticks(np.arange(len(models)), [figure_text(m) for m in models])
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("share of windows of a capture left out of training labelled correctly "
                  "(pooled over the left-out captures), with its interval")
    ax.legend(title="trained on", fontsize=8, loc="lower left")
    save(fig, path)


def write_answer(pooled: pd.DataFrame, classes: pd.DataFrame, windows: pd.DataFrame,
                 confidence: float, figure_png, markdown) -> str:
    """results/robustness/answer.{png,md} from the pooled rows of the transfer table; the
    sentence returned."""
    text = sentence(pooled, classes, windows, confidence)
    lists = "\n".join(
        f"- **{cls}**: {', '.join(classes.loc[classes['measured'] == cls, 'feature']) or 'none'}"
        for cls in ("behavioural", "artefact", "undetermined"))
    write_text(markdown, f"# Which features transfer to an unseen capture?\n\n"
               f"{markdown_cell(text)}\n\n{lists}\n")
    answer_figure(pooled, text, figure_png)
    return text

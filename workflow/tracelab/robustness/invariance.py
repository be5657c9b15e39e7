"""Stage: how far each perturbation moves each window feature, judged against the trace's own
sampling noise, and the measured robustness class beside the declared one
(results/robustness/invariance.*, classes.*, perturbations.*).

A perturbed copy's windows are compared with the original windows of the same traffic: each
perturbed window is matched to the original window its middle falls in (its time mapped back
through the copy's record), so a cut is compared with the part of the trace it kept. For a
feature and a perturbation, each trace's matched pairs give two samples, original and
perturbed, and their KS D, averaged over the traces weighted by their windows (a perturbation
acts on one capture at a time: pooling traces could hide a change); a trace the perturbation
leaves untouched (no value changed) is left out of its average. A window where the feature
is undefined counts as a value below all others, and a value that moved by at most
`relative_tolerance` counts as unmoved. The interval is a moving-block bootstrap of the pairs.

The effect is judged against noise: `noise_d`, the `confidence` quantile of D between two
independent block resamples of the same original windows: how far two samples of this many
windows of unchanged behaviour differ by chance. It shrinks as windows grow, as the two-sample
KS critical value does. A perturbation *moves* a feature when D is above the noise and the
lower end of its interval above `max_ks_d`; it *leaves* it when the upper end is at most
`max_ks_d`; otherwise the windows cannot tell, and `windows_needed` says about how many would.
A feature is an *artefact* when some perturbation moves it, *behavioural* when every one
leaves it, *undetermined* otherwise (docs/robustness.md).
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import seaborn as sns
from matplotlib.figure import Figure
from seaborn.utils import relative_luminance

from tracelab.compare.figures import empty_note, save
from tracelab.core.config import settings as config_settings
from tracelab.core.safe_text import figure_text
from tracelab.robustness.bootstrap import (
    BootstrapSettings,
    bootstrap_settings,
    job_rng,
    ks_statistic,
    moving_block_indices,
    percentile_interval,
)
from tracelab.robustness.tables import (
    number,
    read_windows,
    with_interval,
    write_csv,
    write_tables,
)
from tracelab.security.windows import ARTEFACT, BEHAVIOURAL, recorded_features

log = logging.getLogger(__name__)

UNDETERMINED = "undetermined"
NOT_MEASURED = "not measured"
MOVES, LEAVES = "moves", "leaves"
# How far a KS D averaged over traces may be from a value by rounding alone.
D_ROUNDING = 1e-9
EXPORT_FORMAT = "export_format"
IDENTITY = {"original_from_ns": 0, "perturbed_from_ns": 0, "scale": 1.0}
TABLE_COLUMNS = ["feature", "perturbation", "ks_d", "ks_low", "ks_high", "noise_d", "verdict",
                 "windows_needed", "moved", "windows", "captures"]


@dataclass(frozen=True)
class InvarianceSettings:
    max_ks_d: float
    relative_tolerance: float


def invariance_settings(values: dict | None = None) -> InvarianceSettings:
    return config_settings(InvarianceSettings, "robustness.invariance", values)


@dataclass(frozen=True)
class Pairs:
    """Matched windows of one perturbation over all traces, ordered by trace then time."""

    trace: np.ndarray
    original: pd.DataFrame
    perturbed: pd.DataFrame

    def lengths(self) -> list[int]:
        _, first, counts = np.unique(self.trace, return_index=True, return_counts=True)
        return counts[np.argsort(first)].tolist()


def match_windows(original: pd.DataFrame, perturbed: pd.DataFrame,
                  time_map: dict) -> tuple[np.ndarray, np.ndarray]:
    """(perturbed rows, original rows) of the perturbed windows whose middle, mapped back to
    the original's time, falls in an original window."""
    middle = perturbed["start_ns"].to_numpy() + perturbed["duration_s"].to_numpy() * 5e8
    middle = time_map["original_from_ns"] + (middle - time_map["perturbed_from_ns"]) \
        / time_map["scale"]
    start = original["start_ns"].to_numpy()
    row = np.searchsorted(start, middle, side="right") - 1
    inside = row >= 0
    end = start + original["duration_s"].to_numpy() * 1e9
    inside[inside] = middle[inside] < end[row[inside]]
    return np.flatnonzero(inside), row[inside]


def pairs_of(matched: list[tuple[str, pd.DataFrame, pd.DataFrame]], features: list[str]) -> Pairs:
    """Pairs from (trace, original rows, perturbed rows) of every trace."""
    if not matched:
        empty = pd.DataFrame(columns=features, dtype=np.float64)
        return Pairs(np.array([], dtype=object), empty, empty)
    return Pairs(
        trace=np.concatenate([np.full(len(o), trace, dtype=object) for trace, o, _ in matched]),
        original=pd.concat([o[features] for _, o, _ in matched], ignore_index=True),
        perturbed=pd.concat([p[features] for _, _, p in matched], ignore_index=True))


def compared(original: np.ndarray, perturbed: np.ndarray, tolerance: float):
    """Both sides as compared: a move within the tolerance undone, undefined as -inf."""
    with np.errstate(invalid="ignore"):
        close = np.abs(perturbed - original) <= tolerance * np.maximum(np.abs(original),
                                                                       np.abs(perturbed))
    perturbed = np.where(close, original, perturbed)
    return (np.where(np.isnan(original), -np.inf, original),
            np.where(np.isnan(perturbed), -np.inf, perturbed))


def within_traces(original: np.ndarray, perturbed: np.ndarray, lengths: list[int]) -> np.ndarray:
    """KS D of each row, computed within each trace (a run of columns) and averaged over the
    traces weighted by their windows: pooled traces could hide a change, as a 12-hour shift of
    a 03:00 and a 15:00 capture swaps two hours and leaves the pooled hours alike."""
    total, start = 0.0, 0
    for n in lengths:
        part = slice(start, start + n)
        total = total + n * ks_statistic(original[:, part], perturbed[:, part])
        start += n
    return total / max(start, 1)


def resampled_within_traces(original: np.ndarray, perturbed: np.ndarray,
                            lengths: list[int]) -> np.ndarray:
    """within_traces of (feature, resample, window) arrays, as (feature, resample)."""
    return within_traces(original.reshape(-1, original.shape[-1]),
                         perturbed.reshape(-1, perturbed.shape[-1]),
                         lengths).reshape(original.shape[:-1])


def windows_needed(n: int, effect: dict, max_ks_d: float) -> float:
    """About how many windows would decide an undetermined verdict, if the effect stayed what
    it is and its interval and the noise shrank as 1/sqrt(windows): inf where D sits on the
    threshold."""
    d, low, high, noise = (effect[k] for k in ("ks_d", "ks_low", "ks_high", "noise_d"))
    # D averaged over traces carries rounding residue (0.19999999999987 for 0.2): that close,
    # it sits on the threshold, and the count would be an astronomic integer.
    if math.isclose(d, max_ks_d, rel_tol=0, abs_tol=D_ROUNDING):
        return math.inf
    if d < max_ks_d:
        return float(math.ceil(n * ((high - d) / (max_ks_d - d)) ** 2))
    return float(math.ceil(n * max(((d - low) / (d - max_ks_d)) ** 2, (noise / d) ** 2)))


def verdict(effect: dict, n: int, max_ks_d: float) -> tuple[str, float]:
    """moves / leaves / undetermined, and the windows an undetermined one would need."""
    if effect["ks_low"] > max_ks_d and effect["ks_d"] > effect["noise_d"]:
        return MOVES, np.nan
    if effect["ks_high"] <= max_ks_d:
        return LEAVES, np.nan
    return UNDETERMINED, windows_needed(n, effect, max_ks_d)


def feature_shifts(pairs: Pairs, features: list[str], draws: tuple,
                   settings: InvarianceSettings, bootstrap: BootstrapSettings) -> list[dict]:
    """Per feature: KS D between its original and perturbed windows, its interval, the noise D
    of the original windows against themselves, the verdict, windows moved. Every feature's
    rows go through one KS computation a trace (the statistic is computed row by row)."""
    if not len(pairs.trace):
        return [{"ks_d": np.nan, "ks_low": np.nan, "ks_high": np.nan, "noise_d": np.nan,
                 "verdict": NOT_MEASURED, "windows_needed": np.nan, "moved": 0}
                for _ in features]
    original, perturbed = compared(pairs.original[features].to_numpy(np.float64).T,
                                   pairs.perturbed[features].to_numpy(np.float64).T,
                                   settings.relative_tolerance)
    lengths = pairs.lengths()
    indices, first, second = draws
    resampled = resampled_within_traces(original[:, indices], perturbed[:, indices], lengths)
    noise = resampled_within_traces(original[:, first], original[:, second], lengths)
    d = within_traces(original, perturbed, lengths)
    shifts = []
    for k in range(len(features)):
        low, high = percentile_interval(resampled[k], bootstrap.confidence)
        effect = {"ks_d": float(d[k]), "ks_low": low, "ks_high": high,
                  "noise_d": float(np.quantile(noise[k], bootstrap.confidence))}
        said, needed = verdict(effect, original.shape[1], settings.max_ks_d)
        shifts.append({**effect, "verdict": said, "windows_needed": needed,
                       "moved": int((original[k] != perturbed[k]).sum())})
    return shifts


def invariance_table(pairs: dict[str, Pairs], features: list[str], settings: InvarianceSettings,
                     bootstrap: BootstrapSettings, rng: np.random.Generator) -> pd.DataFrame:
    """One row a (feature, perturbation): KS D with its interval, noise, verdict, counts."""
    rows = []
    for name, matched in pairs.items():
        draws = tuple(moving_block_indices(matched.lengths(), bootstrap.block_windows,
                                           bootstrap.resamples, rng) for _ in range(3))
        for feature, shift in zip(features, feature_shifts(matched, features, draws, settings,
                                                           bootstrap)):
            rows.append({"feature": feature, "perturbation": name, **shift,
                         "windows": len(matched.trace), "captures": len(set(matched.trace))})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def measured_classes(table: pd.DataFrame, declared: pd.Series) -> pd.DataFrame:
    """Per feature: the measured class and the perturbation behind it (the one that moves it
    most, or the one whose effect is least certain), with its effect and noise beside it."""
    rows = []
    for feature in declared.index:
        measured = table[(table["feature"] == feature) & (table["verdict"] != NOT_MEASURED)]
        if measured.empty:
            rows.append({"feature": feature, "measured": NOT_MEASURED})
            continue
        moving = measured[measured["verdict"] == MOVES]
        open_ = measured[measured["verdict"] == UNDETERMINED]
        if len(moving):
            cls, worst = ARTEFACT, moving.sort_values(["ks_low", "ks_d"], ascending=False,
                                                      kind="stable").iloc[0]
        elif len(open_):
            cls, worst = UNDETERMINED, open_.sort_values("windows_needed", ascending=False,
                                                         kind="stable").iloc[0]
        else:
            cls, worst = BEHAVIOURAL, measured.sort_values(["ks_high", "ks_d"], ascending=False,
                                                           kind="stable").iloc[0]
        rows.append({"feature": feature, "measured": cls,
                     # Nothing to name where no perturbation moved a single window.
                     "moved_most_by": worst["perturbation"] if worst["ks_high"] > 0 else "",
                     **{k: worst[k] for k in ("ks_d", "ks_low", "ks_high", "noise_d",
                                              "windows", "captures")},
                     "windows_needed": open_["windows_needed"].max() if cls == UNDETERMINED
                     else np.nan,
                     "moving": ", ".join(moving["perturbation"]),
                     "undetermined_by": ", ".join(open_["perturbation"])})
    classes = pd.DataFrame(rows, columns=[
        "feature", "measured", "moved_most_by", "ks_d", "ks_low", "ks_high", "noise_d",
        "windows", "captures", "windows_needed", "moving", "undetermined_by"]).set_index("feature")
    classes.insert(0, "declared", declared.reindex(classes.index))
    classes["agrees"] = classes["declared"] == classes["measured"]
    return classes.reset_index()


# ---- the stage -----------------------------------------------------------------------------

def untouched(record: dict) -> bool:
    """The copy is the original: every packet kept, no value changed (server ports remapped in
    a capture without them). Such a trace says nothing about the perturbation, and averaging
    it in would dilute the effect on the traces it does change: adding a capture it leaves
    alone could then turn an artefact into a behavioural feature."""
    return record["packets_out"] == record["packets_in"] and not any(record["changed"].values())


def matched_pairs(traces, windows_paths, baselines: dict[str, str], variants,
                  variant_windows_paths, records: dict, format_pairs: dict[str, str],
                  features: list[str]) -> dict[str, Pairs]:
    """Per perturbation (in the order given; the export format last), the matched windows: a
    copy's with its trace's baseline (`baselines`: the windows the copies were made of, the
    trace's or a sample's), the two formats' with each other."""
    original = {trace: read_windows(path) for trace, path in zip(traces, windows_paths)}
    baseline = {trace: read_windows(path) for trace, path in baselines.items()}
    # Every perturbation has a row, "not measured" where it touched no capture.
    matched = defaultdict(list, {name: [] for _, name in variants})
    for (trace, name), windows_path in zip(variants, variant_windows_paths):
        if untouched(records[trace][name]):
            continue  # the perturbation does not apply to this capture: no evidence either way
        perturbed = read_windows(windows_path)
        rows, original_rows = match_windows(baseline[trace], perturbed,
                                            records[trace][name]["time_map"])
        matched[name].append((trace, baseline[trace].iloc[original_rows],
                              perturbed.iloc[rows]))
    for trace, other in format_pairs.items():
        rows, original_rows = match_windows(original[trace], original[other], IDENTITY)
        matched[EXPORT_FORMAT].append((trace, original[trace].iloc[original_rows],
                                       original[other].iloc[rows]))
    return {name: pairs_of(parts, features) for name, parts in matched.items()}


def _count(value) -> str:
    return "" if pd.isna(value) else ("more than can be estimated" if np.isinf(value)
                                      else f"about {int(value)}")


def classes_table(classes: pd.DataFrame, specs: pd.DataFrame) -> pd.DataFrame:
    """The class table as shown: disagreements first, then by how much the feature moves."""
    shown = classes.merge(specs[["name", "unit", "reason"]], left_on="feature", right_on="name")
    shown = shown.sort_values(["agrees", "ks_high", "feature"], ascending=[True, False, True],
                              kind="stable")
    return pd.DataFrame({
        "feature": shown["feature"], "unit": shown["unit"], "declared": shown["declared"],
        "measured": shown["measured"],
        "agrees": np.where(shown["agrees"], "yes", "NO"),
        "perturbation behind it": shown["moved_most_by"].astype(object).fillna(""),
        "KS D [interval]": [with_interval(d, lo, hi) for d, lo, hi in
                            zip(shown["ks_d"], shown["ks_low"], shown["ks_high"])],
        "noise D": [number(n) for n in shown["noise_d"]],
        "windows (captures) compared": [
            "" if pd.isna(w) else f"{int(w)} ({int(c)})"
            for w, c in zip(shown["windows"], shown["captures"])],
        "moved by": shown["moving"].astype(object).fillna(""),
        "undetermined under": shown["undetermined_by"].astype(object).fillna(""),
        "windows needed to tell": [_count(v) for v in shown["windows_needed"]],
        "why declared so": shown["reason"]}).reset_index(drop=True)


def _cells(ax, values: np.ndarray, notes: np.ndarray) -> None:
    """A heatmap of `values` (0 to 1, first row on top), each cell annotated with its note in
    a colour that reads on it (seaborn's rule: dark text on light cells). Drawn directly:
    seaborn's heatmap draws the whole figure once more to decide whether labels overlap."""
    cmap = sns.color_palette("rocket_r", as_cmap=True)
    ax.pcolormesh(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1)
    ax.set(xlim=(0, values.shape[1]), ylim=(values.shape[0], 0))
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    colours = cmap(np.nan_to_num(values))
    # Out of the constrained layout: a cell's note stays inside its cell, and measuring the
    # hundreds of them for the layout took a third of the figure's time.
    for (y, x), note in np.ndenumerate(notes):
        if note:
            ax.text(x + 0.5, y + 0.5, note, ha="center", va="center", fontsize=7,
                    color=".15" if relative_luminance(colours[y, x]) > 0.408 else "w",
                    in_layout=False)


def heatmap(table: pd.DataFrame, classes: pd.DataFrame, confidence: float, path,
            why_empty: str) -> None:
    """Feature x perturbation: KS D; * where the perturbation moves the feature, ? where the
    windows cannot tell; features labelled with declared -> measured class."""
    if table.empty:
        fig = Figure(figsize=(8, 3))
        ax = fig.subplots()
        ax.set_axis_off()
        empty_note(ax, "\n".join(textwrap.wrap(why_empty, 80)))
        save(fig, path)
        return
    order = list(dict.fromkeys(table["perturbation"]))
    counts = table.drop_duplicates("perturbation").set_index("perturbation")
    columns = [figure_text(f"{name}\n{counts.at[name, 'windows']} windows,\n"
                           f"{counts.at[name, 'captures']} captures") for name in order]
    by_class = classes.set_index("feature")
    rows = [figure_text(f"{f}  [{by_class.at[f, 'declared']} -> {by_class.at[f, 'measured']}]")
            for f in classes["feature"]]
    d = table.pivot(index="feature", columns="perturbation", values="ks_d") \
        .reindex(index=classes["feature"], columns=order).astype(np.float64)
    marks = table.pivot(index="feature", columns="perturbation", values="verdict") \
        .reindex(index=classes["feature"], columns=order) \
        .replace({MOVES: "*", UNDETERMINED: "?", LEAVES: ""}).fillna("")
    values = d.to_numpy()
    notes = np.where(np.isnan(values), "", np.char.add(
        np.char.mod("%.2f", np.nan_to_num(values)), marks.to_numpy().astype(str)))
    fig = Figure(figsize=(1.0 * len(order) + 6, 0.34 * len(rows) + 2.5), layout="constrained")
    ax = fig.subplots()
    _cells(ax, values, notes)
    fig.colorbar(ax.collections[0], ax=ax, label="KS D, original vs perturbed windows "
                 "(0 = unmoved)").outline.set_linewidth(0)
    ax.set_xticks(np.arange(len(columns)) + 0.5, columns, rotation="vertical")
    ax.set_yticks(np.arange(len(rows)) + 0.5, rows)
    ax.set_xlabel("perturbation (windows compared, captures)")
    ax.set_ylabel("window feature [declared -> measured class]")
    ax.set_title(figure_text(
        f"How far each perturbation moves each feature (* moves it: D above the noise of the "
        f"windows and the {confidence:.0%} interval above the threshold; ? too few windows to "
        f"tell)"), fontsize=10)
    save(fig, path)


def _copied(sample: dict | None) -> str:
    """What the copies were made of (a record's `sample`)."""
    if sample is None:
        return "the whole trace"
    return (f"a sample: {sample['packets']} of {sample['trace_packets']} packets, "
            f"{sample['from_s']:g}-{sample['to_s']:g} s into the trace")


def perturbations_table(records: list[dict]) -> pd.DataFrame:
    rows = [{"perturbation": r["perturbation"], "trace": r["trace"],
             "made of": _copied(r["sample"]),
             "packets kept": f"{r['packets_out']} of {r['packets_in']}",
             "time moved (s)": r["time_offset_ns"] / 1e9,
             "time scale": r["time_map"]["scale"],
             "connections": r["connections"],
             "values changed": ", ".join(f"{k}: {v}" for k, v in r["changed"].items() if v),
             "what it does": r["description"]} for r in records]
    return pd.DataFrame(rows, columns=["perturbation", "trace", "made of", "packets kept",
                                       "time moved (s)", "time scale", "connections",
                                       "values changed", "what it does"])


def sampled_note(records: dict[str, dict]) -> str:
    """Which traces' copies were made of a sample, and of what (empty when none was)."""
    # Every copy of a trace is made of the same packets: its first record says which.
    samples = {trace: next(iter(per.values()))["sample"] for trace, per in records.items() if per}
    texts = [f"{trace}, {_copied(sample)}" for trace, sample in samples.items() if sample]
    return f" Copies made of a sample, compared with its own windows: {'; '.join(texts)}." \
        if texts else ""


def why_unmeasured(pairs: dict, skipped_pairs: list[str]) -> str:
    """What the tables cannot say, and why (empty when every perturbation was measured)."""
    if not pairs:
        return ("The experiment was left out: robustness.perturbations is empty and no "
                "export-format pair has both traces in the sheet, so no feature is measured.")
    return f" Export-format pairs skipped: {'; '.join(skipped_pairs)}." if skipped_pairs else ""


def write_invariance(*, traces: list[str], windows_paths: list[str], variants: list[list[str]],
                     variant_windows_paths: list[str], baseline_paths: list[str],
                     record_paths: list[str],
                     format_pairs: dict[str, str], skipped_pairs: list[str], settings: dict,
                     table_csv, classes_csv, classes_md, classes_html, perturbations_md,
                     perturbations_html, heatmap_png) -> dict:
    """Stage: results/robustness/ invariance table, class table, perturbation records, figure
    (`settings`: the config's `robustness` section)."""
    sns.set_theme(style="white", context="notebook")
    specs = recorded_features(windows_paths)
    invariance, bootstrap = invariance_settings(settings["invariance"]), \
        bootstrap_settings(settings["bootstrap"])
    copied = list(dict.fromkeys(t for t, _ in variants))
    records = {trace: json.loads(Path(path).read_text())
               for trace, path in zip(copied, record_paths)}
    pairs = matched_pairs(traces, windows_paths, dict(zip(copied, baseline_paths)), variants,
                          variant_windows_paths, records, format_pairs, specs["name"].tolist())
    table = invariance_table(pairs, specs["name"].tolist(), invariance, bootstrap,
                             job_rng(settings["seed"], "invariance"))
    write_csv(table, table_csv)
    classes = measured_classes(table, specs.set_index("name")["robustness"])
    write_csv(classes, classes_csv)
    shown = classes_table(classes, specs)
    windows = sum(pq.ParquetFile(path).metadata.num_rows for path in windows_paths)
    note = why_unmeasured(pairs, skipped_pairs)
    caption = (f"{len(traces)} captures, {windows} original windows. KS D compares each "
               f"trace's windows with the matching windows of its perturbed copy, averaged over "
               f"the traces, with its {bootstrap.confidence:.0%} block-bootstrap interval; noise "
               f"D is how far two resamples of the same original windows differ "
               f"({bootstrap.confidence:.0%} quantile). Artefact: some perturbation moves the "
               f"feature (D above the noise and the interval above {invariance.max_ks_d}); "
               f"behavioural: under every perturbation the interval stays at most "
               f"{invariance.max_ks_d}; undetermined: too few windows to tell, with about how "
               f"many would. Perturbations: {', '.join(pairs) or 'none'}. Rows where the "
               f"measured class disagrees with the declared one are marked and come first."
               f"{sampled_note(records)}{' ' if not pairs else ''}{note}")
    write_tables(shown, markdown=classes_md, html_path=classes_html,
                 title="Measured robustness of each window feature", caption=caption,
                 marked=shown["agrees"] == "NO")
    write_tables(perturbations_table([r for per in records.values() for r in per.values()]),
                 markdown=perturbations_md, html_path=perturbations_html,
                 title="What each perturbation changed",
                 caption="One row a perturbed copy of a trace: what it was made of (the whole "
                         "trace, or a sample of a trace above robustness.sample_packets), "
                         "packets kept, the time moved and stretched, whether its connections "
                         "were assembled again, and how many values of each column changed."
                         + (" " + note if not pairs else ""))
    heatmap(table, classes, bootstrap.confidence, heatmap_png, note)
    counts = classes["measured"].value_counts().to_dict()
    log.info("%d features x %d perturbations; measured classes %s; %d disagree with the "
             "declared class", len(specs), len(pairs), counts, int((~classes["agrees"]).sum()))
    return counts

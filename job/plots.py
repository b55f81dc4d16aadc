"""Plots of a finished run: loss and accuracy per epoch, learning rate per step, confusion matrix, F1.

    from job import plots
    plots.write_report_plots(metrics, lr_logger.learning_rates, staging / "plots")

Figures are built with `matplotlib.figure.Figure` directly, never `pyplot`: no display, no global
backend switch (saving a PNG uses Agg), no figure registry that leaks memory, safe next to other
threads. Each `*_figure` function returns the Figure so tests can inspect the plotted data.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from job.storage import atomic_file

log = logging.getLogger(__name__)

LOSS = "loss.png"
ACCURACY = "accuracy.png"
LEARNING_RATE = "learning_rate.png"
CONFUSION_MATRIX = "confusion_matrix.png"
PER_CLASS_F1 = "per_class_f1.png"
# Multi-label and regression runs (job/problem.py).
PER_LABEL_F1 = "per_label_f1.png"
LABEL_FREQUENCIES = "label_frequencies.png"
SCATTER = "predicted_vs_true.png"
RESIDUALS = "residuals.png"

DPI = 100
# Past this many classes the per-cell counts overlap and stop being readable; colours still show.
ANNOTATE_MAX_CLASSES = 30
# Tick labels longer than this are cut: a 200-character label name would squash the plot to nothing.
LABEL_CHARS = 24


def _short(name: str) -> str:
    name = str(name)
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"


def _epoch_axis(epochs: Sequence[dict]) -> list[int]:
    return [int(e.get("epoch", i + 1)) for i, e in enumerate(epochs)]


def epoch_figure(epochs: Sequence[dict], key: str, title: str) -> Figure:
    """`key` (train) and `val_<key>` (validation) per epoch, one line each when present."""
    fig = Figure(figsize=(6, 4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = _epoch_axis(epochs)
    for series, label, style in ((key, "train", "o-"), (f"val_{key}", "validation", "s--")):
        y = [e.get(series) for e in epochs]
        if any(v is not None for v in y):
            # A missing value plots as a gap (NaN), not as 0 or a shifted epoch.
            ax.plot(x, [math.nan if v is None else float(v) for v in y], style, label=label)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    if x:
        ax.set_xticks(x if len(x) <= 20 else x[:: math.ceil(len(x) / 20)])
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend()
    return fig


def loss_figure(epochs: Sequence[dict]) -> Figure:
    return epoch_figure(epochs, "loss", "Loss per epoch")


def accuracy_figure(epochs: Sequence[dict]) -> Figure:
    return epoch_figure(epochs, "accuracy", "Accuracy per epoch")


def learning_rate_figure(lr_per_step: Sequence[float]) -> Figure:
    fig = Figure(figsize=(6, 4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    # Step numbers are 1-based: the value at step s is the rate the s-th update used (see tblog).
    ax.plot(range(1, len(lr_per_step) + 1), [float(v) for v in lr_per_step], "-")
    ax.set_title("Learning rate per step")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(True, alpha=0.3)
    return fig


def confusion_matrix_figure(confusion: dict) -> Figure:
    """Rows = true class, columns = predicted (as in metrics.json). Cells show counts; the colour is
    the share of the true class's rows, so a small class's errors are as visible as a large one's."""
    names = [str(n) for n in confusion["labels"]]
    counts = [[int(c) for c in row] for row in confusion["rows_true_cols_predicted"]]
    k = len(names)
    shares = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts]
    side = min(4 + 0.45 * k, 24)
    fig = Figure(figsize=(side, side * 0.85), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of true class", shrink=0.8)
    ax.set_xticks(range(k), [_short(n) for n in names], rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k), [_short(n) for n in names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (validation)")
    if k <= ANNOTATE_MAX_CLASSES:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i][j]), ha="center", va="center", fontsize=9 if k <= 10 else 7,
                        color="white" if shares[i][j] > 0.5 else "black")
    return fig


def per_class_f1_figure(per_class: dict, macro_f1: float | None = None, what: str = "class") -> Figure:
    names = list(per_class)
    f1 = [float(per_class[n]["f1"]) for n in names]
    fig = Figure(figsize=(max(6, min(0.4 * len(names) + 2, 24)), 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), f1, color="tab:blue")
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=45 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center")
    if len(names) <= ANNOTATE_MAX_CLASSES:
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in f1], fontsize=8)
    if macro_f1 is not None:
        ax.axhline(macro_f1, color="tab:red", linestyle="--", label=f"macro-F1 {macro_f1:.3f}")
        ax.legend(loc="lower right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("F1")
    ax.set_title(f"F1 per {what} (validation)")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def label_frequencies_figure(frequencies: dict, rows: int | None = None) -> Figure:
    """Training rows carrying each label: how imbalanced a multi-label set is."""
    names = list(frequencies)
    counts = [int(frequencies[n]) for n in names]
    fig = Figure(figsize=(max(6, min(0.4 * len(names) + 2, 24)), 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(names)), counts, color="tab:green")
    ax.set_xticks(range(len(names)), [_short(n) for n in names], rotation=45 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center")
    if len(names) <= ANNOTATE_MAX_CLASSES:
        ax.bar_label(bars, labels=[str(c) for c in counts], fontsize=8)
    ax.set_ylabel("training rows with the label")
    ax.set_title("Label frequencies (train" + (f", {rows} rows)" if rows else ")"))
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def scatter_figure(true: Sequence[float], predicted: Sequence[float]) -> Figure:
    """Predicted against true score, with the y = x line a perfect model would sit on."""
    fig = Figure(figsize=(5.5, 5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(true, predicted, s=8, alpha=0.5)
    lo, hi = min([*true, *predicted]), max([*true, *predicted])
    ax.plot([lo, hi], [lo, hi], "--", color="tab:red", label="y = x")
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted score")
    ax.set_title("Predicted vs true (validation)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return fig


def residuals_figure(true: Sequence[float], predicted: Sequence[float]) -> Figure:
    """Residual (predicted - true) against the true score: bias by score range shows as a slope."""
    fig = Figure(figsize=(6, 4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(true, [p - t for t, p in zip(true, predicted)], s=8, alpha=0.5)
    ax.axhline(0.0, color="tab:red", linestyle="--")
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted - true")
    ax.set_title("Residuals (validation)")
    ax.grid(True, alpha=0.3)
    return fig


def report_figures(metrics: dict, lr_per_step: Sequence[float]) -> dict[str, Figure]:
    """File name -> Figure for every plot the data allows; a plot without data is left out (logged),
    so a run that lacks, say, the learning-rate record still gets the others."""
    figures: dict[str, Figure] = {}
    epochs = metrics.get("epochs") or []
    final = metrics.get("final_evaluation") or {}
    kind = (metrics.get("problem") or {}).get("problem_type", "single_label")
    if epochs:
        figures[LOSS] = loss_figure(epochs)
        if kind == "single_label":
            figures[ACCURACY] = accuracy_figure(epochs)
    if lr_per_step:
        figures[LEARNING_RATE] = learning_rate_figure(lr_per_step)
    if final.get("confusion_matrix"):
        figures[CONFUSION_MATRIX] = confusion_matrix_figure(final["confusion_matrix"])
    if final.get("per_class"):
        figures[PER_CLASS_F1] = per_class_f1_figure(final["per_class"], final.get("macro_f1"))
    if final.get("per_label"):
        figures[PER_LABEL_F1] = per_class_f1_figure(final["per_label"], final.get("macro_f1"), what="label")
    frequencies = (metrics.get("problem") or {}).get("label_frequencies")
    if kind == "multi_label" and frequencies:
        figures[LABEL_FREQUENCIES] = label_frequencies_figure(frequencies,
                                                              (metrics.get("data") or {}).get("train_examples"))
    sample = final.get("sample") or {}
    if sample.get("true"):
        figures[SCATTER] = scatter_figure(sample["true"], sample["predicted"])
        figures[RESIDUALS] = residuals_figure(sample["true"], sample["predicted"])
    expected = {"single_label": (LOSS, ACCURACY, LEARNING_RATE, CONFUSION_MATRIX, PER_CLASS_F1),
                "multi_label": (LOSS, LEARNING_RATE, PER_LABEL_F1, LABEL_FREQUENCIES),
                "regression": (LOSS, LEARNING_RATE, SCATTER, RESIDUALS)}.get(kind, ())
    skipped = [n for n in expected if n not in figures]
    if skipped:
        log.warning("plots without data, not drawn: %s", ", ".join(skipped))
    return figures


def write_report_plots(metrics: dict, lr_per_step: Sequence[float], folder: Path) -> list[str]:
    """Write the PNGs into `folder` (created); return their names relative to it, in a fixed order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in report_figures(metrics, lr_per_step).items():
        # Write then rename: the folder is staged for upload, a half-written PNG must never be in it.
        with atomic_file(folder / name) as tmp:
            fig.savefig(tmp, format="png")
        written.append(name)
    return written

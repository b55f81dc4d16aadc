"""job.plots: real PNG files whose figures hold exactly the run's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from job import plots
from sample_metrics import LABELS, sample_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_writes_five_decodable_pngs(tmp_path):
    from matplotlib import image

    metrics = sample_metrics()
    names = plots.write_report_plots(metrics, [1e-5, 2e-5, 3e-5, 2e-5, 1e-5], tmp_path / "plots")
    assert names == ["loss.png", "accuracy.png", "learning_rate.png", "confusion_matrix.png", "per_class_f1.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names), "no temp files left"
    for name in names:
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        pixels = image.imread(tmp_path / "plots" / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0, f"{name} is blank"


@pytest.mark.parametrize("n_epochs", [1, 4])
def test_epoch_figures_plot_every_epoch_train_and_validation(n_epochs):
    metrics = sample_metrics(epochs=n_epochs)
    for fig, key in ((plots.loss_figure(metrics["epochs"]), "loss"),
                     (plots.accuracy_figure(metrics["epochs"]), "accuracy")):
        lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
        assert set(lines) == {"train", "validation"}
        for label, series in (("train", key), ("validation", f"val_{key}")):
            x, y = lines[label].get_data()
            assert list(x) == list(range(1, n_epochs + 1))
            np.testing.assert_allclose(y, [e[series] for e in metrics["epochs"]])


def test_missing_validation_value_is_a_gap_not_a_shift():
    epochs = [{"epoch": 1, "loss": 1.0, "val_loss": 0.9}, {"epoch": 2, "loss": 0.5}]
    lines = {ln.get_label(): ln for ln in plots.loss_figure(epochs).axes[0].get_lines()}
    assert list(lines["validation"].get_xdata()) == [1, 2]
    assert np.isnan(lines["validation"].get_ydata()[1])


def test_learning_rate_figure_has_one_point_per_step():
    lrs = [i * 1e-6 for i in range(1, 38)]
    (line,) = plots.learning_rate_figure(lrs).axes[0].get_lines()
    assert list(line.get_xdata()) == list(range(1, 38))
    np.testing.assert_allclose(line.get_ydata(), lrs)


def test_confusion_matrix_annotates_counts_with_label_names():
    cm = sample_metrics()["final_evaluation"]["confusion_matrix"]
    fig = plots.confusion_matrix_figure(cm)
    ax = fig.axes[0]
    counts = cm["rows_true_cols_predicted"]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert texts == {(i, j): str(counts[i][j]) for i in range(3) for j in range(3)}
    assert [t.get_text() for t in ax.get_xticklabels()] == list(LABELS)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(LABELS)
    # Colours are row shares: every row of the image sums to 1.
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()).sum(axis=1), 1.0)


def test_per_class_f1_bars_match_the_evaluation():
    final = sample_metrics()["final_evaluation"]
    ax = plots.per_class_f1_figure(final["per_class"], final["macro_f1"]).axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [final["per_class"][n]["f1"] for n in LABELS])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(LABELS)
    (macro,) = ax.get_lines()
    assert macro.get_ydata()[0] == pytest.approx(final["macro_f1"])


def test_plots_without_data_are_skipped(tmp_path):
    metrics = sample_metrics()
    metrics["epochs"] = []
    assert plots.write_report_plots(metrics, [], tmp_path) == ["confusion_matrix.png", "per_class_f1.png"]

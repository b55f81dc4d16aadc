"""job.tblog: a real fit() of a tiny Dense model writes TensorBoard event files we read back."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from job import tblog
from job.errors import ConfigError

STEPS, EPOCHS = 5, 2


def read_scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from every event file in `folder`."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    out: dict[str, dict[int, float]] = defaultdict(dict)
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event files in {folder}"
    for path in files:
        # What tf.compat.v1.train.summary_iterator does, without its deprecation warning.
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                # TF2 summaries store scalars as tensors (plugin "scalars"), not simple_value.
                assert value.metadata.plugin_data.plugin_name == "scalars"
                out[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    return dict(out)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import tensorflow as tf
    from job.training import WarmupLinearDecay

    tf.keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype("float32"), rng.integers(0, 2, size=40)
    schedule = WarmupLinearDecay(1e-2, warmup_steps=3, total_steps=STEPS * EPOCHS)
    model = tf.keras.Sequential([tf.keras.layers.Dense(8, activation="relu"), tf.keras.layers.Dense(2)])
    model.compile(optimizer=tf.keras.optimizers.AdamW(learning_rate=schedule),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy("accuracy")])
    log_dir = tmp_path_factory.mktemp("tb") / "logs"
    cb = tblog.TensorBoardLogger(log_dir)
    history = model.fit(x, y, batch_size=8, epochs=EPOCHS, validation_data=(x[:16], y[:16]), callbacks=[cb],
                        verbose=0)
    return cb, log_dir, history.history, schedule


def test_learning_rate_of_every_step_is_the_schedule_at_that_step(fitted):
    cb, _, _, schedule = fitted
    expected = [float(schedule(i)) for i in range(STEPS * EPOCHS)]
    np.testing.assert_allclose(cb.learning_rates, expected, rtol=1e-6)
    assert max(expected) == pytest.approx(1e-2) and expected[0] < expected[2]  # warm-up then decay


def test_step_scalars_cover_every_optimizer_step(fitted):
    cb, log_dir, _, _ = fitted
    train = read_scalars(log_dir / "train")
    steps = list(range(1, STEPS * EPOCHS + 1))
    assert sorted(train[tblog.STEP_LR]) == steps and sorted(train[tblog.STEP_LOSS]) == steps
    np.testing.assert_allclose([train[tblog.STEP_LR][s] for s in steps], cb.learning_rates, rtol=1e-6)


def test_epoch_scalars_match_keras_history_for_train_and_validation(fitted):
    _, log_dir, history, _ = fitted
    train, val = read_scalars(log_dir / "train"), read_scalars(log_dir / "validation")
    assert set(val) == {"epoch/loss", "epoch/accuracy"}
    assert set(train) == {"epoch/loss", "epoch/accuracy", tblog.STEP_LOSS, tblog.STEP_LR}
    for scalars, prefix in ((train, ""), (val, "val_")):
        for key in ("loss", "accuracy"):
            assert sorted(scalars[f"epoch/{key}"]) == [1, 2]
            np.testing.assert_allclose([scalars[f"epoch/{key}"][e] for e in (1, 2)], history[prefix + key], rtol=1e-6)
    # The last step's running-mean loss is the epoch's train loss.
    assert train[tblog.STEP_LOSS][STEPS * EPOCHS] == pytest.approx(history["loss"][-1], rel=1e-6)


def test_every_n_steps_thins_events_but_not_the_rate_record(tmp_path):
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.layers.Dense(2)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    cb = tblog.TensorBoardLogger(tmp_path, every_n_steps=3)
    model.fit(np.zeros((14, 3), "float32"), np.zeros((14, 2), "float32"), batch_size=2, epochs=1, callbacks=[cb],
              verbose=0)
    assert cb.learning_rates == pytest.approx([0.1] * 7)  # a constant rate works too
    assert sorted(read_scalars(tmp_path / "train")[tblog.STEP_LR]) == [3, 6]


@pytest.mark.parametrize("uri", ["gs://bucket/tb", "s3://bucket/tb"])
def test_remote_log_dirs_are_refused(uri):
    with pytest.raises(ConfigError, match="local folder"):
        tblog.TensorBoardLogger(uri)


def test_a_second_fit_continues_the_step_numbering(tmp_path):
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.layers.Dense(2)])
    schedule = tf.keras.optimizers.schedules.PolynomialDecay(0.1, decay_steps=8, end_learning_rate=0.0)
    model.compile(optimizer=tf.keras.optimizers.SGD(schedule), loss="mse")
    cb = tblog.TensorBoardLogger(tmp_path)
    x, y = np.zeros((8, 3), "float32"), np.zeros((8, 2), "float32")
    model.fit(x, y, batch_size=2, epochs=1, callbacks=[cb], verbose=0)
    model.fit(x, y, batch_size=2, epochs=2, initial_epoch=1, callbacks=[cb], verbose=0)  # a resumed run
    np.testing.assert_allclose(cb.learning_rates, [float(schedule(i)) for i in range(8)], rtol=1e-6)
    assert sorted(read_scalars(tmp_path / "train")[tblog.STEP_LR]) == list(range(1, 9))
    assert sorted(read_scalars(tmp_path / "train")["epoch/loss"]) == [1, 2]

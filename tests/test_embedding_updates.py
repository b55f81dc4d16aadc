"""--embedding-updates dense|frozen: frozen keeps the embeddings as they were and still trains the
rest. LazyRowsAdamW (not an option yet, see its docstring) moves only the table rows a batch used,
exactly as Adam would move them, and dense weights as Keras' AdamW does."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from job import training
from job.config import TrainConfig

LR, WD, B1, B2, EPS = 0.1, 0.01, 0.9, 0.999, 1e-8


def step_both(optimizer, table, dense, rows):
    with tf.GradientTape() as tape:
        looked_up = tf.gather(table, rows)  # IndexedSlices gradient, as an embedding lookup has
        loss = tf.reduce_sum(looked_up * tf.constant([1.0, -2.0, 3.0])) + tf.reduce_sum(dense * dense)
    grads = tape.gradient(loss, [table, dense])
    assert isinstance(grads[0], tf.IndexedSlices)
    optimizer.apply_gradients(zip(grads, [table, dense]))


def adam_row(value, grad, m, v, t):
    """One AdamW step (decay included) of one row, in numpy: the reference."""
    m = B1 * m + (1 - B1) * grad
    v = B2 * v + (1 - B2) * grad * grad
    alpha = LR * np.sqrt(1 - B2 ** t) / (1 - B1 ** t)
    return value - alpha * m / (np.sqrt(v) + EPS) - LR * WD * value, m, v


def test_lazy_adamw_moves_the_used_rows_like_adam_and_leaves_the_rest():
    start = np.arange(30, dtype=np.float32).reshape(10, 3) / 10
    lazy_table, lazy_dense = tf.Variable(start), tf.Variable(np.ones((4,), np.float32))
    ref_table, ref_dense = tf.Variable(start), tf.Variable(np.ones((4,), np.float32))
    lazy = training.LazyRowsAdamW(learning_rate=LR, weight_decay=WD, epsilon=EPS)
    dense = tf.keras.optimizers.AdamW(learning_rate=LR, weight_decay=WD, epsilon=EPS)
    g = np.array([1.0, -2.0, 3.0])

    step_both(lazy, lazy_table, lazy_dense, tf.constant([1, 3, 3]))  # row 3 twice: its gradient sums
    step_both(dense, ref_table, ref_dense, tf.constant([1, 3, 3]))
    step_both(lazy, lazy_table, lazy_dense, tf.constant([3, 5]))
    step_both(dense, ref_table, ref_dense, tf.constant([3, 5]))

    got = lazy_table.numpy()
    # Rows never looked up keep their values (AdamW decays them every step).
    for row in (0, 2, 4, 6, 7, 8, 9):
        np.testing.assert_array_equal(got[row], start[row])
    assert not np.allclose(ref_table.numpy()[0], start[0])
    # Row 1, used at step 1 only: one Adam step, then still (no stale momentum at step 2).
    r1, _, _ = adam_row(start[1], g, 0, 0, 1)
    np.testing.assert_allclose(got[1], r1, rtol=1e-5)
    # Row 3 at both steps (gradient 2g then g), row 5 at step 2 only (its first moment from 0, t = 2).
    r3, m, v = adam_row(start[3], 2 * g, 0, 0, 1)
    r3, _, _ = adam_row(r3, g, m, v, 2)
    np.testing.assert_allclose(got[3], r3, rtol=1e-5)
    r5, _, _ = adam_row(start[5], g, 0, 0, 2)
    np.testing.assert_allclose(got[5], r5, rtol=1e-5)
    # Dense weights: exactly Keras' AdamW.
    np.testing.assert_allclose(lazy_dense.numpy(), ref_dense.numpy(), rtol=1e-6)


def test_dense_and_frozen_train_with_keras_adamw():
    for updates in ("dense", "frozen"):
        assert type(training.make_optimizer(TrainConfig(embedding_updates=updates), 10)) is tf.keras.optimizers.AdamW


@pytest.mark.parametrize("updates", ["dense", "frozen"])
def test_a_bert_step_under_each_option_moves_what_it_should(tiny_checkpoints, updates):
    from job import model as model_step

    tf.keras.utils.set_random_seed(0)
    training.set_precision("fp32")
    clf = model_step.load_classifier(tiny_checkpoints["tf"], "tf", ("a", "b"))
    cfg = TrainConfig(learning_rate=1e-2, warmup_ratio=0.0, precision="fp32", embedding_updates=updates)
    training.compile_model(clf, cfg, total_steps=10)
    table = clf.get_input_embeddings().weight
    before, encoder_before = table.numpy().copy(), clf.trainable_variables[-1].numpy().copy()
    ids = np.full((4, 6), 7, np.int32)
    ids[:, 0], ids[0, 1] = 2, 9
    clf.fit({"input_ids": ids, "attention_mask": np.ones_like(ids)}, np.array([0, 1, 0, 1]), epochs=1,
            batch_size=4, verbose=0)
    moved = np.flatnonzero(np.any(table.numpy() != before, axis=1))
    assert not np.allclose(clf.trainable_variables[-1].numpy(), encoder_before), "the head trains"
    if updates == "dense":
        assert len(moved) == len(before)  # weight decay and momentum touch every row
    else:
        assert len(moved) == 0 and all(v is not table for v in clf.trainable_variables)

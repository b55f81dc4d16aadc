"""Batching, padding, the learning-rate schedule and the metrics: pure functions, checked exactly."""

from __future__ import annotations

import numpy as np
import pytest

from job import evaluation, features
from job.config import TrainConfig


@pytest.mark.parametrize("n,batch", [(1, 4), (10, 4), (100, 7), (1000, 32)])
def test_every_row_once_per_epoch_in_ceil_n_over_batch_batches(n, batch):
    lengths = np.random.default_rng(0).integers(1, 128, size=n)
    for epoch in range(2):
        batches = features.plan_batches(lengths, batch, seed=5, epoch=epoch)
        assert len(batches) == features.steps_per_epoch(n, batch)
        assert sorted(np.concatenate(batches).tolist()) == list(range(n))
        assert all(1 <= len(b) <= batch for b in batches)


def test_batches_are_shuffled_per_epoch_and_reproducible():
    lengths = np.random.default_rng(0).integers(1, 128, size=500)
    a0 = features.plan_batches(lengths, 16, seed=1, epoch=0)
    a1 = features.plan_batches(lengths, 16, seed=1, epoch=1)
    again = features.plan_batches(lengths, 16, seed=1, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(a0, again))
    assert not all(np.array_equal(x, y) for x, y in zip(a0, a1))


def test_length_sorted_windows_pad_far_less_than_random_batches():
    lengths = np.random.default_rng(0).integers(3, 120, size=4000)

    def padded_fraction(batches):
        real = sum(lengths[b].sum() for b in batches)
        computed = sum(len(b) * lengths[b].max() for b in batches)
        return 1 - real / computed

    random_batches = np.array_split(np.random.default_rng(1).permutation(4000), 125)
    assert padded_fraction(features.plan_batches(lengths, 32, 0, 0)) < 0.05 < padded_fraction(random_batches)


def _encoded(rows: list[list[int]], labels: list[int]) -> features.Encoded:
    offsets = np.cumsum([0] + [len(r) for r in rows])
    flat = np.array([t for r in rows for t in r], dtype=np.int32)
    return features.Encoded({"input_ids": flat, "attention_mask": np.ones_like(flat)}, offsets,
                            np.array(labels, dtype=np.int32))


def test_pad_batch_pads_to_multiple_of_16_within_max_length():
    enc = _encoded([[5, 6, 7], [8] * 20, [9]], [0, 1, 0])
    out = features.pad_batch(enc, np.array([0, 2]), max_length=64, pad_id=0, multiple=16)
    assert out["input_ids"].shape == (2, 16)
    assert out["input_ids"][0, :4].tolist() == [5, 6, 7, 0]
    assert out["attention_mask"][1].tolist() == [1] + [0] * 15
    assert features.pad_batch(enc, np.array([1]), max_length=24, multiple=16)["input_ids"].shape == (1, 24)


def test_pad_batch_without_xla_pads_to_the_longest_row_exactly():
    enc = _encoded([[5, 6, 7], [8] * 20, [9]], [0, 1, 0])
    out = features.pad_batch(enc, np.array([2, 0]), max_length=64, pad_id=0, multiple=1)
    assert out["input_ids"].tolist() == [[9, 0, 0], [5, 6, 7]]
    assert out["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert features.pad_multiple(jit_compile=False) == 1 and features.pad_multiple(jit_compile=True) == 16


def test_eval_dataset_order_maps_back_to_rows():
    enc = _encoded([[1] * n for n in (9, 2, 30, 5)], [0, 1, 0, 1])
    ds, order = features.eval_dataset(enc, 2, max_length=64)
    seen = [int(m.sum()) for x, _, _ in ds.as_numpy_iterator() for m in x["attention_mask"]]
    assert [seen[list(order).index(i)] for i in range(4)] == [9, 2, 30, 5]


def test_warmup_then_linear_decay_to_zero():
    from job.training import WarmupLinearDecay, make_optimizer

    s = WarmupLinearDecay(1.0, warmup_steps=10, total_steps=110)
    values = [float(s(i)) for i in range(111)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[60] == pytest.approx(0.5) and values[110] == 0.0
    assert all(a <= b + 1e-7 for a, b in zip(values[:10], values[1:10]))
    opt = make_optimizer(TrainConfig(learning_rate=3e-5, warmup_ratio=0.1), total_steps=200)
    schedule = opt._learning_rate
    assert schedule.warmup_steps == 20 and schedule.peak == 3e-5 and schedule.total_steps == 200


def test_metrics_match_hand_computation():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    logits = np.eye(3)[pred] * 5.0
    m = evaluation.classification_metrics(labels, logits, ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"]["rows_true_cols_predicted"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["recall"] == 1.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    correct = -np.log(np.exp(5) / (np.exp(5) + 2))
    wrong = -np.log(1 / (np.exp(5) + 2))
    assert m["loss"] == pytest.approx((4 * correct + 2 * wrong) / 6)


def test_input_pipelines_do_not_autotune():
    # With tf.data autotuning on, destroying fit()'s input iterator waited for the autotune thread:
    # 31-54 s between the last step and fit() returning on a 63-step MiniLM run (job/features.py).
    # The pipelines yield ready batches from Python: a fixed prefetch of two is all they need.
    enc = _encoded([[1] * n for n in (9, 2, 30, 5)], [0, 1, 0, 1])
    for ds in (features.train_dataset(enc, 2, epochs=1, seed=0, max_length=64),
               features.validation_dataset(enc, 2, max_length=64), features.eval_dataset(enc, 2, max_length=64)[0]):
        assert ds.options().autotune.enabled is False
        assert len(list(ds)) == 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from conftest import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("with_pairs", [False, True])
def test_compact_encoding_pads_to_what_the_tokenizer_gives(tok, with_pairs):
    from job.data import Split

    words = "good bad film story acting plot café naïve 😀".split()
    texts = [" ".join(words[(i * 7 + j) % 9] for j in range(1 + i % 13)) for i in range(50)]
    pairs = texts[::-1] if with_pairs else None
    split = Split(texts, pairs, np.arange(50) % 2)
    enc = features.encode(split, tok, 24)
    # Compact: ids in 2 bytes, the mask never stored, segment ids stored only for pairs.
    assert enc.features["input_ids"].dtype == np.uint16 and enc.features["attention_mask"] == 1
    if with_pairs:
        assert enc.features["token_type_ids"].dtype == np.int8 and enc.features["token_type_ids"].any()
    else:
        assert enc.features["token_type_ids"] == 0
    idx = np.array([3, 17, 0, 49, 8])
    got = features.pad_batch(enc, idx, 24, pad_id=tok.pad_token_id, multiple=1)
    args = ([texts[i] for i in idx], [pairs[i] for i in idx]) if with_pairs else ([texts[i] for i in idx],)
    want = tok(*args, truncation=True, max_length=24, padding="longest", return_tensors="np")
    assert set(got) == set(enc.names) == {"input_ids", "attention_mask", "token_type_ids"}
    for name in got:
        assert got[name].dtype == np.int32
        assert np.array_equal(got[name], want[name]), name

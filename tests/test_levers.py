"""The speed levers are correct, not just fast: padding never changes a prediction, mixed precision
keeps the head, logits and loss in float32, and the options resolve to their documented defaults.
(Bucketed batches holding every row once per epoch: tests/test_features.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from job import export, features, training
from job import model as model_step
from job.config import DataConfig, JobConfig, ModelConfig, OutputConfig, TrainConfig
from job.data import Split
from job.errors import ConfigError

SENTENCES = ["Wonderful.", "The film was truly brilliant from start to finish.", "I found the plot dull.",
             "Honestly, the acting felt rather tedious; the ending was clumsy and the cast was weak."]


@pytest.fixture
def policy():
    """Restores the process-wide Keras dtype policy the test changes."""
    yield
    tf.keras.mixed_precision.set_global_policy("float32")


def _encoded(checkpoint):
    tok = model_step.load_tokenizer(checkpoint, ModelConfig(model="m", max_length=64))
    return features.encode(Split(tuple(SENTENCES), None, np.zeros(len(SENTENCES), np.int32)), tok, 64)


def test_padding_never_changes_a_prediction(tiny_checkpoints):
    tf.keras.utils.set_random_seed(0)
    clf = model_step.load_classifier(tiny_checkpoints["tf"], "tf", ("negative", "positive"))
    enc = _encoded(tiny_checkpoints["tf"])
    alone = np.concatenate([clf(features.pad_batch(enc, np.array([i]), 64, multiple=1), training=False).logits
                            for i in range(len(SENTENCES))])
    for multiple in (1, 16):
        batch = features.pad_batch(enc, np.arange(len(SENTENCES)), 64, multiple=multiple)
        assert batch["attention_mask"].sum() == enc.lengths.sum() < batch["attention_mask"].size
        together = clf(batch, training=False).logits.numpy()
        np.testing.assert_allclose(together, alone, atol=1e-5, rtol=1e-5)
    assert np.abs(alone).max() > 1e-3  # a real signal was compared, not zeros


@pytest.mark.parametrize("precision,compute", [("bf16", tf.bfloat16), ("fp16", tf.float16)])
def test_mixed_precision_keeps_head_logits_and_loss_in_float32(tiny_checkpoints, policy, precision, compute):
    assert training.set_precision(precision) == precision
    tf.keras.utils.set_random_seed(0)
    clf = model_step.load_classifier(tiny_checkpoints["tf"], "tf", ("negative", "positive"))
    training.compile_model(clf, TrainConfig(learning_rate=1e-3, precision=precision), total_steps=10)
    enc = _encoded(tiny_checkpoints["tf"])
    x = features.pad_batch(enc, np.arange(len(SENTENCES)), 64)
    y = np.array([1, 1, 0, 0], np.int32)
    hidden = clf.bert(x, training=False).last_hidden_state
    assert hidden.dtype == compute  # the body really runs in 16 bits
    logits = clf(x, training=False).logits
    assert logits.dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in clf.classifier.weights)
    assert clf.loss(y, logits).dtype == tf.float32
    if precision == "fp16":
        assert isinstance(clf.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    before = clf.classifier.kernel.numpy().copy()
    logs = clf.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert not np.allclose(before, clf.classifier.kernel.numpy())  # the step was applied, not skipped

    # Export computes in float32: the trained weights give a float32 model's logits (what hf_model/
    # and the PyTorch copy give), not the 16-bit ones.
    mixed = clf(x, training=False).logits.numpy()
    with export.float32_scope(clf):  # each epoch's --select-best scoring: float32, then back to 16 bits
        assert clf.bert(x, training=False).last_hidden_state.dtype == tf.float32
    assert clf.bert(x, training=False).last_hidden_state.dtype == compute
    tf.keras.mixed_precision.set_global_policy("float32")
    ref = model_step.load_classifier(tiny_checkpoints["tf"], "tf", ("negative", "positive"))
    ref.set_weights(clf.get_weights())
    want = ref(x, training=False).logits.numpy()
    assert export.float32_compute(clf) and not export.float32_compute(clf)  # once; then already float32
    assert clf.bert(x, training=False).last_hidden_state.dtype == tf.float32
    np.testing.assert_allclose(clf(x, training=False).logits.numpy(), want, atol=1e-6)
    assert not np.array_equal(mixed, want)  # the 16-bit logits really differed


def test_defaults_on_cpu_are_native_precision_without_xla_and_exact_padding():
    assert not tf.config.list_physical_devices("GPU")
    cfg = TrainConfig()
    assert (cfg.precision, cfg.jit_compile, cfg.steps_per_execution) == ("auto", "auto", 1)
    # This machine's own answer: bf16 only if its CPU lists a native bf16 flag.
    native = bool(training.cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert training.resolve_precision("auto") == ("bf16" if native else "fp32")
    assert not training.jit_compile_enabled(cfg)
    assert training.jit_compile_enabled(TrainConfig(jit_compile="on"))
    assert features.pad_multiple() == 1


@pytest.mark.parametrize("field,value,flag", [("precision", "fp8", "--precision"),
                                              ("jit_compile", "yes", "--jit-compile"),
                                              ("steps_per_execution", 0, "--steps-per-execution"),
                                              ("embedding_updates", "lazy", "--embedding-updates")])
def test_invalid_lever_settings_are_rejected(field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        JobConfig(DataConfig(data="d"), ModelConfig(model="m"), TrainConfig(**{field: value}), OutputConfig(output="o"))


class _Store:
    enabled = True
    last_save = (0.0, 0)

    def __init__(self):
        self.saved: list[int] = []

    def save(self, checkpoint, step, history):
        self.saved.append(step)


def test_checkpoints_every_n_steps_also_with_several_steps_per_execution():
    store = _Store()
    saver = training.Checkpointing(store, checkpoint=None, every=10, history={}, preemption=None)
    step = tf.Variable(0, dtype=tf.int64)
    saver.model = type("M", (), {"optimizer": type("O", (), {"iterations": step})()})()
    saver.on_train_begin()
    for _ in range(9):  # steps_per_execution 4: batch ends at steps 4, 8, 12, ...
        step.assign_add(4)
        saver.on_train_batch_end(0)
    # 4: the one timed save after the first step (the logged preemption budget), then every 10.
    assert store.saved == [4, 12, 20, 32]


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512_vnni {extra}
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512_vnni {extra}
"""


@pytest.mark.parametrize("extra,expected", [("amx_bf16 amx_tile amx_int8", "bf16"), ("avx512_bf16", "bf16"),
                                            ("amx_int8 amx_tile", "fp32"), ("", "fp32")])
def test_precision_auto_uses_bf16_only_on_cpus_that_compute_it_natively(tmp_path, monkeypatch, extra, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    monkeypatch.setattr(training, "CPUINFO", str(cpuinfo))
    assert training.resolve_precision("auto") == expected
    assert training.resolve_precision("fp32") == "fp32"  # an explicit choice wins over the detection
    try:
        assert training.set_precision("auto") == expected
        assert tf.keras.mixed_precision.global_policy().name == training.POLICIES[expected]
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_precision_auto_is_fp32_where_cpuinfo_cannot_be_read(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CPUINFO", str(tmp_path / "missing"))
    assert training.cpu_flags() == frozenset()
    assert training.resolve_precision("auto") == "fp32"

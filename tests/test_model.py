"""Checkpoint loading: TF and PyTorch-safetensors weights, and the errors for broken checkpoints."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf

from job import model as model_step
from job.config import ModelConfig
from job.errors import ConfigError, ModelError, TransientError


def backbone(m) -> dict[str, np.ndarray]:
    return {w.name.split("/", 1)[1]: w.numpy() for w in m.weights if "classifier" not in w.name}


def test_tf_and_pytorch_safetensors_checkpoints_load_the_same_weights(tiny_checkpoints):
    assert model_step.check_checkpoint(tiny_checkpoints["tf"]) == "tf"
    assert model_step.check_checkpoint(tiny_checkpoints["pt"]) == "safetensors"
    a = model_step.load_classifier(tiny_checkpoints["tf"], "tf", ("x", "y", "z"))
    b = model_step.load_classifier(tiny_checkpoints["pt"], "safetensors", ("x", "y", "z"))
    wa, wb = backbone(a), backbone(b)
    assert set(wa) == set(wb) and len(wa) > 30
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    assert a.config.id2label == {0: "x", 1: "y", 2: "z"} and b.config.num_labels == 3
    ids = tf.constant([[2, 10, 11, 3]])
    assert a(ids).logits.shape == (1, 3)


def test_checkpoint_without_weights(tiny_checkpoints, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoints["pt"], d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="has no weights"):
        model_step.check_checkpoint(d)
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="only PyTorch .bin weights"):
        model_step.check_checkpoint(d)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        model_step.check_checkpoint(tmp_path)


@pytest.mark.parametrize("kind,file", [("safetensors", "model.safetensors"), ("tf", "tf_model.h5")])
def test_corrupt_weights(tiny_checkpoints, tmp_path, kind, file):
    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoints["pt" if kind == "safetensors" else "tf"], d)
    (d / file).write_bytes((d / file).read_bytes()[:200])
    with pytest.raises(ModelError, match="cannot load weights"):
        model_step.load_classifier(d, kind, ("a", "b"))


def test_weights_that_do_not_match_the_config(tiny_checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoints["pt"], d)
    state = load_file(str(d / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "layer.1." not in k}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ModelError, match="backbone weights missing"):
        model_step.load_classifier(d, "safetensors", ("a", "b"))


def test_max_length_beyond_the_model_limit(tiny_checkpoints):
    with pytest.raises(ConfigError, match="exceeds this model's limit of 128 tokens"):
        model_step.load_tokenizer(tiny_checkpoints["tf"], ModelConfig(model="m", max_length=512))
    assert model_step.load_tokenizer(tiny_checkpoints["tf"], ModelConfig(model="m", max_length=128)).is_fast


def test_unknown_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Offline, a hub id cannot be told apart from a typo: retryable, and the message says the way out.
    with pytest.raises(TransientError, match="no-such-org/no-such-model: could not download .* local or gs://"):
        model_step.resolve_checkpoint("no-such-org/no-such-model", tmp_path)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", "..",
                                   "missing.safetensors"])
def test_a_shard_index_naming_files_outside_the_folder_is_refused(tiny_checkpoints, tmp_path, shard):
    import json

    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoints["pt"], d)
    (d / "model.safetensors").rename(tmp_path / "outside.safetensors")  # a real weights file, one level up
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a.weight": shard}}))
    with pytest.raises(ModelError, match="not a file in the model folder|missing from"):
        model_step.check_checkpoint(d)


def test_a_sharded_safetensors_checkpoint_loads_from_its_own_folder(tiny_checkpoints, tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(tiny_checkpoints["pt"], d)
    state = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(d / file), metadata={"format": "pt"})
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert model_step.check_checkpoint(d) == "safetensors"
    a = model_step.load_classifier(tiny_checkpoints["pt"], "safetensors", ("x", "y"))
    b = model_step.load_classifier(d, "safetensors", ("x", "y"))
    wa, wb = backbone(a), backbone(b)
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)

"""CheckpointStore: a restore checks every file against the sha256 recorded when it was saved."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tensorflow as tf

from job import storage
from job.checkpoints import CheckpointStore
from job.errors import BadInputError


def saved(uri: str, tmp_path, value: float) -> tf.Variable:
    var = tf.Variable(np.full((64,), value, np.float32))
    store = CheckpointStore(uri, tmp_path / f"save-{uuid.uuid4().hex}", "fp")
    store.save(tf.train.Checkpoint(v=var), step=5, history={})
    return var


@pytest.fixture(params=["local", "gs"])
def where(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ckpt")
    gcs = request.getfixturevalue("gcs")
    bucket = f"c-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    return f"gs://{bucket}/run/.finetune-job/checkpoints"


def test_restore_gives_back_what_was_saved(where, tmp_path):
    saved(where, tmp_path, 1.5)
    var = tf.Variable(np.zeros((64,), np.float32))
    point = CheckpointStore(where, tmp_path / "restore", "fp").restore(tf.train.Checkpoint(v=var))
    assert point.step == 5 and np.all(var.numpy() == 1.5)


def test_a_checkpoint_file_damaged_at_rest_is_refused_naming_it(where, tmp_path):
    saved(where, tmp_path, 2.5)
    state = storage.read_bytes(storage.join(where, "state.json"))
    data_file = next(n for n in __import__("json").loads(state)["files"] if ".data-" in n)
    raw = bytearray(storage.read_bytes(storage.join(where, data_file)))
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: TensorFlow itself might read it without complaint
    storage.write_object(storage.join(where, data_file), bytes(raw))
    var = tf.Variable(np.zeros((64,), np.float32))
    with pytest.raises(BadInputError, match=rf"checkpoint file .*{data_file} does not match the sha256 recorded"):
        CheckpointStore(where, tmp_path / "restore", "fp").restore(tf.train.Checkpoint(v=var))
    assert np.all(var.numpy() == 0)  # nothing was loaded from it

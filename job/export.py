"""Export: a servable SavedModel and a Hugging Face folder, written into the run's staging folder.

The SavedModel holds only the variables and one traced serving function (not the Keras object
graph), so it loads with plain `tf.saved_model.load` - TF Serving, Vertex AI prediction - without
transformers installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import tensorflow as tf

from job import problem

SAVED_MODEL = "saved_model"
HF_MODEL = "hf_model"


def serving_function(model, input_names: tuple[str, ...], problem_spec=None):
    spec = {n: tf.TensorSpec([None, None], tf.int32, name=n) for n in input_names}

    @tf.function(input_signature=[spec])
    def serve(inputs):
        logits = model(inputs, training=False).logits
        # Mixed precision may compute in 16-bit: serve float32 regardless.
        logits = tf.cast(logits, tf.float32)
        # The outputs depend on the problem type (job/problem.py): probabilities, labels or a score.
        return problem.serving_outputs(logits, problem_spec)

    return serve


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for v in sorted(model.variables, key=lambda v: v.name):
        h.update(v.name.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()[:16]


def export_saved_model(model, input_names: tuple[str, ...], path: Path, spec=None) -> Path:
    module = tf.Module()
    module.weights = list(model.variables)  # tracked so the captured variables are saved
    module.serve = serving_function(model, input_names, spec)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def export_hf(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def export_all(model, tokenizer, input_names: tuple[str, ...], staging: Path, spec=None) -> dict[str, str]:
    export_saved_model(model, input_names, staging / SAVED_MODEL, spec)
    export_hf(model, tokenizer, staging / HF_MODEL)
    return {"saved_model": SAVED_MODEL, "hf_model": HF_MODEL}

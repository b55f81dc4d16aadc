"""Export: a servable SavedModel and a Hugging Face folder, written into the run's staging folder.

The SavedModel holds only the variables and traced serving functions (not the Keras object graph),
so it loads with plain `tf.saved_model.load` - TF Serving, Vertex AI prediction, KServe - without
transformers installed (the text signatures need `tensorflow_text` imported, for its ops):

- `serving_default`: `text` [+ `text_pair`] strings -> probabilities, logits, label, label_id; the
  checkpoint's tokenizer runs in the graph (job.serving), published only when it gave the Hugging
  Face tokenizer's ids on every sampled validation row. Otherwise serving_default takes token ids.
- `classify`: TF Serving's Classify API (serialized tf.Example with `text` [+ `text_pair`]).
- `serve_token_ids`: input_ids, attention_mask[, token_type_ids] -> the same outputs.

`serving/1/` is the same SavedModel in TF Serving's version layout, with a warm-up file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from job import problem

log = logging.getLogger(__name__)

SAVED_MODEL = "saved_model"
HF_MODEL = "hf_model"
SERVING = "serving"
# TF Serving serves the highest integer folder under --model_base_path; a run holds one model.
SERVING_VERSION = 1
WARMUP = "assets.extra/tf_serving_warmup_requests"
WARMUP_ROWS = 3
# Rows whose predictions are compared through the text and the token-id signatures at export.
PREDICTION_CHECK_ROWS = 64
PREDICTION_TOLERANCE = 1e-5
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def heads(logits: tf.Tensor, label_names: Sequence[str], spec=None) -> dict[str, tf.Tensor]:
    """Logits -> every signature's outputs, by problem type: single-label adds the argmax class
    (`label`, `label_id`) to the softmax; multi-label and regression are job.problem.serving_outputs
    (per-label sigmoids with the labels above their thresholds; `score`)."""
    logits = tf.cast(logits, tf.float32)  # mixed precision may compute in 16-bit: serve float32 regardless
    if spec is not None and spec.kind != problem.SINGLE:
        return problem.serving_outputs(logits, spec)
    label_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1), "label_id": label_id,
            "label": tf.gather(tf.constant(list(label_names), tf.string), label_id)}


def label_names_of(model) -> tuple[str, ...]:
    id2label = model.config.id2label
    return tuple(str(id2label[i]) for i in range(len(id2label)))


def serving_function(model, input_names: tuple[str, ...], label_names: Sequence[str] | None = None, spec=None):
    """The token-ids signature (`serve_token_ids`)."""
    label_names = tuple(label_names or label_names_of(model))
    ids = {n: tf.TensorSpec([None, None], tf.int32, name=n) for n in input_names}

    @tf.function(input_signature=[ids], autograph=False)  # see text_functions
    def serve(inputs):
        return heads(model(inputs, training=False).logits, label_names, spec)

    return serve


def is_regression(spec) -> bool:
    return spec is not None and spec.kind == problem.REGRESSION


def api_signature(spec) -> str:
    """TF Serving's API for the problem type: Classify (classes and scores), or Regress for a score."""
    return "regress" if is_regression(spec) else "classify"


def text_functions(model, graph_tokenizer, input_names: tuple[str, ...], label_names: Sequence[str], pair: bool,
                   spec=None):
    """(serving_default, classify or regress) tf.functions that tokenize in the graph."""
    label_names = tuple(label_names)

    def predict(text, text_pair=None):
        enc = graph_tokenizer(text, text_pair)
        # Static rank 2 (ragged to_tensor leaves the rank unknown): the model then traces as fast as
        # from the ids signature.
        inputs = {n: tf.ensure_shape(enc[n], [None, None]) for n in input_names}
        return heads(model(inputs, training=False).logits, label_names, spec)

    text_spec = tf.TensorSpec([None], tf.string, name="text")
    pair_spec = tf.TensorSpec([None], tf.string, name="text_pair")
    # autograph=False: the code is graph code already, and converting the model's and tensorflow-text's
    # Python source cost ~20 s of the export (2 CPUs) for nothing.
    if pair:
        serve = tf.function(lambda text, text_pair: predict(text, text_pair), input_signature=[text_spec, pair_spec],
                            autograph=False)
    else:
        serve = tf.function(lambda text: predict(text), input_signature=[text_spec], autograph=False)
    feature_spec = {"text": tf.io.FixedLenFeature([], tf.string, default_value="")}
    if pair:
        feature_spec["text_pair"] = tf.io.FixedLenFeature([], tf.string, default_value="")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")], autograph=False)
    def classify(inputs):
        features = tf.io.parse_example(inputs, feature_spec)
        # A call of the traced serve function, not a second copy of the tokenizer and model graph.
        out = serve(features["text"], features["text_pair"]) if pair else serve(features["text"])
        if is_regression(spec):
            return {"outputs": out["score"]}  # the Regress API's one output
        scores = out["probabilities"]
        classes = tf.tile(tf.constant([list(label_names)], tf.string), [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    return serve, classify


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for v in sorted(model.variables, key=lambda v: v.name):
        h.update(v.name.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()[:16]


def export_saved_model(model, input_names: tuple[str, ...], path: Path, label_names: Sequence[str] | None = None,
                       graph_tokenizer=None, pair: bool = False, spec=None) -> list[str]:
    """Write the SavedModel; returns its signature names (text ones only with a graph_tokenizer)."""
    label_names = tuple(label_names or label_names_of(model))
    module = tf.Module()
    module.weights = list(model.variables)  # tracked so the captured variables are saved
    module.serve_token_ids = serving_function(model, input_names, label_names, spec)
    signatures = {"serve_token_ids": module.serve_token_ids}
    if graph_tokenizer is not None:
        module.tokenizer = graph_tokenizer  # tracked: its vocabulary tables and model file are saved
        module.serve_text, module.classify = text_functions(model, graph_tokenizer, input_names, label_names, pair,
                                                            spec)
        signatures.update({"serving_default": module.serve_text, api_signature(spec): module.classify})
    else:
        signatures["serving_default"] = module.serve_token_ids
    tf.saved_model.save(module, str(path), signatures=signatures)
    if graph_tokenizer is not None:
        _set_method(path, api_signature(spec), REGRESS_METHOD if is_regression(spec) else CLASSIFY_METHOD)
    return sorted(signatures)


def _set_method(path: Path, signature: str, method: str) -> None:
    """tf.saved_model.save marks every signature as predict; TF Serving's Classify API wants its method."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(path) / "saved_model.pb"
    sm = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta in sm.meta_graphs:
        meta.signature_def[signature].method_name = method
    pb.write_bytes(sm.SerializeToString())


def export_hf(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def pt_state_dict(model) -> dict[str, np.ndarray] | str:
    """The model's weights under PyTorch names and layouts, or the reason they cannot be converted.

    The inverse of job.model._from_pt_safetensors: transformers' own TF->PyTorch name rule, dense
    kernels transposed ([in, out] -> [out, in]); numpy only, so no torch in the job or its image."""
    from transformers.modeling_tf_pytorch_utils import convert_tf_weight_name_to_pt_weight_name

    out: dict[str, np.ndarray] = {}
    scope = model.name + "/"
    for w in model.weights:
        # The rule drops the first name level (the model's scope), leaving "bert/..." and "classifier/...":
        # the PyTorch class's names. A weight created outside the scope gets it first.
        tf_name = w.name if w.name.startswith(scope) else scope + w.name
        name, transpose = convert_tf_weight_name_to_pt_weight_name(tf_name, tf_weight_shape=w.shape)
        if transpose.name not in ("NO", "SIMPLE"):
            return f"weight {w.name} needs a {transpose.name} layout change, which is not converted"
        value = np.asarray(w.numpy(), dtype=np.float32)
        if name in out:
            return f"two weights map to the PyTorch name {name}"
        out[name] = np.ascontiguousarray(value.T if transpose.name == "SIMPLE" else value)
    return out


def export_pt_safetensors(model, path: Path) -> str | None:
    """hf_model/model.safetensors in PyTorch naming (what from_pretrained in PyTorch, transformers 5
    and Text Embeddings Inference read); returns the reason when it is not written."""
    from safetensors.numpy import save_file

    state = pt_state_dict(model)
    if isinstance(state, str):
        log.warning("no PyTorch-format model.safetensors: %s", state)
        return state
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return None


def text_serving(tokenizer, max_length: int, texts: Sequence[str], pairs: Sequence[str] | None
                 ) -> tuple[object | None, dict]:
    """(graph tokenizer or None, the record of why): the tokenizer rebuilt in the graph, kept only if
    it gives the Hugging Face ids on up to PARITY_ROWS validation rows."""
    from job import serving

    graph = serving.graph_tokenizer(tokenizer, max_length)
    if isinstance(graph, serving.Unsupported):
        return None, {"text_signatures": False, "reason": graph.reason}
    check = serving.parity(tokenizer, graph, texts, pairs, max_length)
    if check["identical"] != check["rows"]:
        return None, {"parity": check, "text_signatures": False,
                      "reason": f"the in-graph tokenizer differs from the Hugging Face tokenizer on "
                                f"{check['rows'] - check['identical']} of {check['rows']} validation rows"}
    return graph, {"parity": check, "text_signatures": True}


def prediction_gap(path: Path, tokenizer, input_names: tuple[str, ...], max_length: int, texts: Sequence[str],
                   pairs: Sequence[str] | None) -> float:
    """Largest probability difference between the exported serving_default (text) and serve_token_ids
    (fed by the Hugging Face tokenizer) on up to PREDICTION_CHECK_ROWS rows, checked on the written
    SavedModel: the file that is served, not the Python objects that made it. (Also the cheaper
    way: loading restores the traced graphs, while calling the in-memory functions would trace
    them again, tf.saved_model.save tracing its own copies.)"""
    import tensorflow_text  # noqa: F401  (the text signature's ops)

    from job import serving

    n = min(len(texts), PREDICTION_CHECK_ROWS)
    t = list(texts[:n])
    p = list(pairs[:n]) if pairs is not None else None
    sigs = tf.saved_model.load(str(path)).signatures
    via_text = sigs["serving_default"](**{"text": tf.constant(t), **({"text_pair": tf.constant(p)} if p else {})})
    enc = tokenizer(t, *([p] if p is not None else []), truncation=True, max_length=max_length, padding=True,
                    return_tensors="np")
    via_ids = sigs["serve_token_ids"](**{k: tf.constant(enc[k], tf.int32) for k in input_names})
    key = "score" if "score" in via_ids else "probabilities"
    return serving.max_abs_difference(via_text[key].numpy(), via_ids[key].numpy())


def write_warmup(path: Path, inputs: dict[str, np.ndarray], signature: str = "serving_default") -> Path:
    """TF Serving's warm-up file: PredictionLog records, replayed at load so the first request is fast."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name=signature))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(record.SerializeToString())
    return path


def float32_compute(model) -> bool:
    """Switch a mixed-precision (bf16/fp16) model to float32 compute, in place; True if it was mixed.

    Mixed precision is a training speed-up; what is published computes in float32, like the
    float32 weights in hf_model/: the SavedModel then gives the checkpoint's own predictions (to
    1e-5, in PyTorch too) and serves at full speed on hardware without 16-bit units. The variables
    are float32 already (AutoCastVariable storage); the layers' policy decides how they are read."""
    layers = list(model._flatten_layers(include_self=True))
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in layers):
        return False
    for layer in layers:
        layer._set_dtype_policy(tf.keras.mixed_precision.Policy("float32"))
    return True


@contextlib.contextmanager
def float32_scope(model):
    """Within the block the model computes in float32 (as it will be published), then as before:
    each epoch's validation scoring for --select-best then measures what the published model
    scores. Already traced training functions are not affected (the policy is read at trace time)."""
    layers = list(model._flatten_layers(include_self=True))
    before = [layer.dtype_policy for layer in layers]
    float32_compute(model)
    try:
        yield model
    finally:
        for layer, policy in zip(layers, before):
            layer._set_dtype_policy(policy)


def export_all(model, tokenizer, input_names: tuple[str, ...], staging: Path, max_length: int | None = None,
               texts: Sequence[str] = (), pairs: Sequence[str] | None = None, spec=None) -> dict:
    """saved_model/, serving/1/ (+ warm-up) and hf_model/ into `staging`; returns the layout for
    metrics.json. Text signatures need max_length and validation texts to prove them on."""
    float32_compute(model)  # (the CLI's run has done it before its final evaluation)
    texts = list(texts)
    pair = pairs is not None
    if max_length and texts:
        graph, record = text_serving(tokenizer, max_length, texts, pairs)
    else:
        graph, record = None, {"text_signatures": False, "reason": "no validation texts to check the tokenizer on"}
    signatures = export_saved_model(model, input_names, staging / SAVED_MODEL, graph_tokenizer=graph, pair=pair,
                                    spec=spec)
    if graph is not None:
        gap = prediction_gap(staging / SAVED_MODEL, tokenizer, input_names, max_length, texts, pairs)
        record["prediction_max_abs_difference"] = gap
        if gap > PREDICTION_TOLERANCE:
            graph = None
            record.update(text_signatures=False, reason=f"text and token-id predictions differ by {gap:.2e} "
                                                        f"(> {PREDICTION_TOLERANCE})")
            shutil.rmtree(staging / SAVED_MODEL)  # (written by this export, in its own staging folder)
            signatures = export_saved_model(model, input_names, staging / SAVED_MODEL, pair=pair, spec=spec)
        else:
            record["reason"] = "identical ids on every sampled validation row, and the same predictions"
    if graph is None:
        log.warning("exporting token-id signatures only (serving_default takes input_ids): %s", record["reason"])
    else:
        log.info("text signatures exported: tokenizer identical on %d/%d validation rows", record["parity"]["rows"],
                 record["parity"]["rows"])
    version = staging / SERVING / str(SERVING_VERSION)
    shutil.copytree(staging / SAVED_MODEL, version)
    sample_t = texts[:WARMUP_ROWS] or ["warm-up"]
    sample_p = list(pairs[:WARMUP_ROWS]) if pairs is not None and texts else None
    if graph is not None:
        warm = {"text": np.array(sample_t, dtype=object)}
        if sample_p is not None:
            warm["text_pair"] = np.array(sample_p, dtype=object)
    else:
        enc = tokenizer(sample_t, *([sample_p] if sample_p is not None else []), truncation=True,
                        max_length=max_length or 128, padding=True, return_tensors="np")
        warm = {k: enc[k].astype(np.int32) for k in input_names}
    write_warmup(version / WARMUP, warm)
    export_hf(model, tokenizer, staging / HF_MODEL)
    no_pt = export_pt_safetensors(model, staging / HF_MODEL)
    return {"saved_model": SAVED_MODEL, "hf_model": HF_MODEL, "serving": f"{SERVING}/{SERVING_VERSION}",
            "signatures": signatures, "max_length": max_length, **record,
            "pytorch_safetensors": no_pt is None, **({"pytorch_safetensors_reason": no_pt} if no_pt else {})}

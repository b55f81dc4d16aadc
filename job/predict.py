"""Batch predictions with a published run: class probabilities for many texts, written to a file.

    from job import predict
    probs, names = predict.predict_rows(Path("runs/r1"), texts, None, batch_size=64, max_length=128)
    predict.write_predictions(texts, probs, names, Path("predictions.jsonl"))

`model_dir` is a local run folder (resolve_run brings a published run there, verified). Its
`saved_model/` is used when present - a traced graph: faster, and no transformers model code runs -
else `hf_model/` through TFAutoModelForSequenceClassification. The tokenizer and the class names
always come from `hf_model/` (the SavedModel holds neither).

Tokenization and batching are the training job's own (job.features): the same truncation, rows
sorted by length so each batch pads little, batches padded to a multiple of 16 (few traced shapes).
Probabilities come back in input order.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from job import export, features, logs, problem, storage
from job.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CSV_SUFFIXES = (".csv",)


@dataclass(frozen=True)
class Predictor:
    kind: str  # "saved_model" or "hf_model": which one computes the probabilities
    tokenizer: object
    label_names: tuple[str, ...]
    input_names: tuple[str, ...]  # what the model takes, in the tokenizer's order
    # padded int32 batch -> [batch, K] float32: class probabilities (softmax), label probabilities
    # (sigmoid, multi-label) or the score ([batch, 1], regression)
    probabilities: Callable[[dict[str, np.ndarray]], np.ndarray]
    spec: problem.ProblemSpec | None = None  # the problem type and thresholds stored with the model
    # The SavedModel's text signature (tokenizer in the graph), when the run has one for this max_length:
    # (texts, pairs or None) -> the same [batch, K] float32 as `probabilities`.
    text_probabilities: Callable[[list[str], list[str] | None], np.ndarray] | None = None
    max_length: int | None = None  # the length the predictor truncates to


def _hf_dir(model_dir: Path) -> Path:
    # A run folder holds hf_model/; a bare Hugging Face folder (config.json at the top) works too.
    for candidate in (model_dir / export.HF_MODEL, model_dir):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelError(f"{model_dir} holds no {export.HF_MODEL}/config.json: give the folder of a published run")


def label_names(hf_dir: Path) -> tuple[str, ...]:
    """Class names by id from config.json's id2label (read directly: no model needed)."""
    config = json.loads((hf_dir / "config.json").read_text())
    id2label = config.get("id2label") or {}
    try:
        ids = sorted(int(k) for k in id2label)
    except ValueError:
        raise ModelError(f"{hf_dir}/config.json: id2label keys are not class ids: {list(id2label)[:5]}") from None
    if not ids or ids != list(range(len(ids))):
        raise ModelError(f"{hf_dir}/config.json: id2label must name classes 0..K-1, got ids {ids[:10]}")
    return tuple(str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids)


def run_max_length(model_dir: Path) -> int | None:
    """The max_length the run trained with (its metrics.json), if it says."""
    try:
        metrics = json.loads((Path(model_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    value = (metrics.get("outputs") or {}).get("max_length") or metrics.get("config", {}).get("model", {}).get("max_length")
    return int(value) if isinstance(value, int) and value > 0 else None


def load_predictor(model_dir: Path, max_length: int | None = None) -> Predictor:
    import tensorflow as tf

    from job import model as model_step
    from job.config import ModelConfig

    model_dir = Path(model_dir).expanduser()
    trained = run_max_length(model_dir)
    max_length = max_length or trained or 128
    hf_dir = _hf_dir(model_dir)
    # load_tokenizer refuses a max_length beyond the model's position limit with a ConfigError.
    tokenizer = model_step.load_tokenizer(hf_dir, ModelConfig(max_length=max_length))
    names = label_names(hf_dir)
    spec = problem.spec_from_config(json.loads((hf_dir / "config.json").read_text()), names)
    token_names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]

    saved = model_dir / export.SAVED_MODEL
    if (saved / "saved_model.pb").is_file():
        try:
            import tensorflow_text  # noqa: F401  (registers the in-graph tokenizer's ops before loading)
        except ImportError:
            pass
        with storage.tf_readable(saved) as readable:  # (everything is in memory once loaded)
            signatures = tf.saved_model.load(str(readable)).signatures
        serve = signatures.get("serve_token_ids") or signatures["serving_default"]
        text_fn = None
        default = signatures["serving_default"]
        # The text signature truncates to the run's length: used only when that is the length asked for.
        if "text" in default.structured_input_signature[1] and max_length == trained:
            pair = "text_pair" in default.structured_input_signature[1]
            sorted_once: list[bool] = []

            def text_fn(texts, pairs):
                if pair != (pairs is not None):
                    raise DataError(f"this run was trained on {'text pairs' if pair else 'single texts'}: "
                                    f"{'give' if pair else 'drop'} --text-pair-column")
                args = {"text": tf.constant(list(texts))}
                if pair:
                    args["text_pair"] = tf.constant(list(pairs))
                # Only the first run prints the oneDNN notice (see logs.native_sorted): the later
                # batches write to fd 2 directly, without a temporary file each.
                with logs.native_sorted() if not sorted_once else contextlib.nullcontext():
                    out = default(**args)
                sorted_once.append(True)
                if spec.kind == problem.REGRESSION:
                    return out["score"].numpy().reshape(-1, 1)
                return out["probabilities"].numpy()
        wanted = set(serve.structured_input_signature[1])
        missing = wanted - set(token_names)
        if missing:
            raise ModelError(f"{saved} wants inputs {sorted(missing)} that the tokenizer in {hf_dir} does not produce")
        inputs = tuple(n for n in token_names if n in wanted)

        def probabilities(batch):
            out = serve(**{n: tf.constant(batch[n], tf.int32) for n in inputs})
            if spec.kind == problem.REGRESSION:
                return out["score"].numpy().reshape(-1, 1)
            return out["probabilities"].numpy()

        return Predictor("saved_model_text" if text_fn else "saved_model", tokenizer, names, inputs, probabilities,
                         spec, text_fn, max_length)

    from transformers import TFAutoModelForSequenceClassification

    # tf_model.h5, not the PyTorch model.safetensors beside it (transformers 4.57's TF loader fails on it).
    clf = TFAutoModelForSequenceClassification.from_pretrained(str(hf_dir), use_safetensors=False)
    inputs = tuple(token_names)

    @tf.function(reduce_retracing=True)
    def forward(batch):
        logits = tf.cast(clf(batch, training=False).logits, tf.float32)
        if spec.kind == problem.REGRESSION:
            return logits
        return tf.sigmoid(logits) if spec.kind == problem.MULTI else tf.nn.softmax(logits, axis=-1)

    def probabilities(batch):
        return forward({n: tf.constant(batch[n], tf.int32) for n in inputs}).numpy()

    return Predictor("hf_model", tokenizer, names, inputs, probabilities, spec, None, max_length)


def predict_with(predictor: Predictor, texts: Sequence[str], pairs: Sequence[str] | None, batch_size: int,
                 max_length: int, log_every: int = 100) -> np.ndarray:
    """[len(texts), K] float32 probabilities, in input order; one progress line every `log_every` batches."""
    from job.data import Split

    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if pairs is not None and len(pairs) != len(texts):
        raise DataError(f"{len(texts)} texts but {len(pairs)} text pairs: give one pair per text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"row {i + 1}: the text is {type(t).__name__}, not a string")
        if pairs is not None and not isinstance(pairs[i], str):
            raise DataError(f"row {i + 1}: the text pair is {type(pairs[i]).__name__}, not a string")
    k = len(predictor.label_names)
    out = np.zeros((len(texts), k), dtype=np.float32)
    if not texts:
        return out
    if predictor.text_probabilities is not None and max_length == predictor.max_length:
        t0 = time.perf_counter()
        for b, start in enumerate(range(0, len(texts), batch_size), 1):
            stop = min(start + batch_size, len(texts))
            out[start:stop] = predictor.text_probabilities(
                list(texts[start:stop]), list(pairs[start:stop]) if pairs is not None else None)
            if b % log_every == 0 or stop == len(texts):
                log.info("predicted %d/%d rows through the text signature (%.0f rows/s)", stop, len(texts),
                         stop / max(time.perf_counter() - t0, 1e-9))
        return out
    split = Split(tuple(texts), tuple(pairs) if pairs is not None else None, np.zeros(len(texts), np.int32))
    enc = features.encode(split, predictor.tokenizer, max_length)
    pad_id = predictor.tokenizer.pad_token_id or 0
    batches = features.plan_batches(enc.lengths, batch_size, 0, 0, shuffle=False)
    t0, done = time.perf_counter(), 0
    for b, idx in enumerate(batches, 1):
        batch = features.pad_batch(enc, idx, max_length, pad_id)
        out[idx] = predictor.probabilities(batch)
        done += len(idx)
        if b % log_every == 0 or b == len(batches):
            rate = done / max(time.perf_counter() - t0, 1e-9)
            log.info("predicted %d/%d rows (%d/%d batches, %.0f rows/s)", done, len(texts), b, len(batches), rate)
    return out


def predict_rows(model_dir: Path, texts: Sequence[str], pairs: Sequence[str] | None, batch_size: int,
                 max_length: int | None = None, log_every: int = 100, with_spec: bool = False):
    """(probabilities [len(texts), K] float32 in input order, class names by id) from a run folder;
    max_length None: the run's own; with_spec: also the model's problem.ProblemSpec (what the
    outputs mean, the thresholds)."""
    predictor = load_predictor(Path(model_dir), max_length)
    max_length = predictor.max_length
    log.info("predicting %d rows with %s/%s (%s, %d outputs), batch %d, max_length %d", len(texts), model_dir,
             predictor.kind, predictor.spec.kind, len(predictor.label_names), batch_size, max_length)
    out = predict_with(predictor, texts, pairs, batch_size, max_length, log_every)
    return (out, predictor.label_names, predictor.spec) if with_spec else (out, predictor.label_names)


# --------------------------------------------------------------------------------------------
# Output file

def _prob(p: float) -> float:
    # float32 carries ~7 significant digits; printing 17 would only add noise to the file.
    return float(f"{p:.7g}")


def write_predictions(rows: Sequence[str], probs: np.ndarray, names: Sequence[str], path: Path,
                      pairs: Sequence[str] | None = None, spec: problem.ProblemSpec | None = None) -> Path:
    """One line/row per input: text (and text_pair), predicted label id and name, and the
    probability of every class - JSON Lines (.jsonl/.ndjson/.json) or CSV (.csv, one
    `probability_<name>` column per class). Multi-label: `labels`, the labels at or above their
    thresholds (CSV: a JSON array), and each label's probability; regression: `score`.
    Written to a temp file and renamed: never half a file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise ConfigError(f"predictions file {path}: use a .jsonl or .csv name")
    probs = np.asarray(probs)
    if probs.shape != (len(rows), len(names)):
        raise DataError(f"{len(rows)} rows and {len(names)} classes, but probabilities of shape {probs.shape}")
    if pairs is not None and len(pairs) != len(rows):
        raise DataError(f"{len(rows)} texts but {len(pairs)} text pairs")
    labels = probs.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64)
    from job.storage import atomic_file

    if spec is not None and spec.kind != problem.SINGLE:
        return _write_other(rows, probs, names, path, pairs, spec)
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if suffix in CSV_SUFFIXES:
                writer = csv.writer(f)
                writer.writerow(["text", *(["text_pair"] if pairs is not None else []), "label", "label_name",
                                 *(f"probability_{n}" for n in names)])
                for i, text in enumerate(rows):
                    writer.writerow([text, *([pairs[i]] if pairs is not None else []), int(labels[i]),
                                     names[labels[i]], *(_prob(p) for p in probs[i])])
            else:
                for i, text in enumerate(rows):
                    record = {"text": text, **({"text_pair": pairs[i]} if pairs is not None else {}),
                              "label": int(labels[i]), "label_name": names[labels[i]],
                              "probabilities": {n: _prob(p) for n, p in zip(names, probs[i])}}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def _write_other(rows, probs, names, path: Path, pairs, spec: problem.ProblemSpec) -> Path:
    from job.storage import atomic_file

    chosen = probs >= np.asarray(spec.thresholds or [0.5] * len(names))[None, :]
    csv_file = path.suffix.lower() in CSV_SUFFIXES
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f) if csv_file else None
            if writer:
                head = ["score"] if spec.kind == problem.REGRESSION else ["labels", *(f"probability_{n}" for n in names)]
                writer.writerow(["text", *(["text_pair"] if pairs is not None else []), *head])
            for i, text in enumerate(rows):
                pair = [pairs[i]] if pairs is not None else []
                if spec.kind == problem.REGRESSION:
                    fields = {"score": _prob(probs[i, 0])}
                else:
                    fields = {"labels": [n for n, on in zip(names, chosen[i]) if on],
                              "probabilities": {n: _prob(p) for n, p in zip(names, probs[i])}}
                if writer:
                    values = ([fields["score"]] if spec.kind == problem.REGRESSION else
                              [json.dumps(fields["labels"], ensure_ascii=False), *fields["probabilities"].values()])
                    writer.writerow([text, *pair, *values])
                else:
                    f.write(json.dumps({"text": text, **({"text_pair": pair[0]} if pair else {}), **fields},
                                       ensure_ascii=False) + "\n")
    return path


def _as_logits(spec: problem.ProblemSpec, outputs: np.ndarray) -> np.ndarray:
    """What problem.metrics takes, from what a predictor returns: log-probabilities stand in for
    softmax logits (the metrics take a log-softmax, which they survive), log-odds for sigmoid ones."""
    if spec.kind == problem.REGRESSION:
        return outputs
    p = np.clip(outputs.astype(np.float64), 1e-12, 1.0 - (1e-12 if spec.kind == problem.MULTI else 0.0))
    return np.log(p) - (np.log1p(-p) if spec.kind == problem.MULTI else 0.0)


# --------------------------------------------------------------------------------------------
# The predict and evaluate commands: storage in, storage out

def resolve_run(model_uri: str, scratch: Path) -> tuple[str, Path]:
    """(run uri, local folder of its files) for a published run, or for an output root whose
    champion.json names one (below that root). Only a run with a manifest is loaded, and only files
    that match their manifest's sha256 (job.publish.open_run)."""
    from job import champion, publish

    pointer, _ = champion.read_champion(model_uri)
    uri = champion.run_of(model_uri, pointer) if pointer else model_uri
    if pointer:
        log.info("%s", champion.describe(pointer))
    _, folder = publish.open_run(uri, scratch / "run")
    return uri, folder


def predict_command(cfg, scratch: Path) -> dict:
    """`predict` (cfg: job.config.ScoreConfig): probabilities for every row of cfg.data, to cfg.output."""
    from job import data

    data_uri, output_uri, data_cfg, batch_size, max_length = cfg.data, cfg.output, cfg.rows, cfg.batch_size, cfg.max_length
    run_uri, local = resolve_run(cfg.model, scratch)
    rows = data.read_rows(data_uri, data_cfg, scratch / "data", labelled=False)
    probs, names, spec = predict_rows(local, rows.texts, rows.pairs, batch_size, max_length, with_spec=True)
    local_file = write_predictions(rows.texts, probs, names, scratch / "out" / _file_name(output_uri), rows.pairs,
                                   spec)
    _put_file(local_file, output_uri)
    log.info("wrote %d predictions of %s to %s", len(rows.texts), run_uri, output_uri)
    return {"model": run_uri, "rows": len(rows.texts), "output": output_uri}


def evaluate_command(cfg, scratch: Path) -> dict:
    """`evaluate` (cfg: job.config.ScoreConfig): the training evaluation's metrics for a trained model
    on a labelled file or folder, also written to cfg.output when given."""
    import dataclasses

    from job import data

    data_uri, output_uri, data_cfg, batch_size, max_length = cfg.data, cfg.output, cfg.rows, cfg.batch_size, cfg.max_length
    run_uri, local = resolve_run(cfg.model, scratch)
    # The labels are read as the model's problem type (lists for multi-label, numbers for regression).
    spec = problem.spec_from_config(json.loads((_hf_dir(local) / "config.json").read_text()),
                                    label_names(_hf_dir(local)))
    data_cfg = dataclasses.replace(data_cfg, problem_type=spec.kind)
    rows = data.read_rows(data_uri, data_cfg, scratch / "data", labelled=True)
    probs, names = predict_rows(local, rows.texts, rows.pairs, batch_size, max_length)
    index = {n: i for i, n in enumerate(names)}
    if spec.kind == problem.REGRESSION:
        targets = np.asarray(rows.labels, dtype=np.float64)
    else:
        given = [v for row in rows.labels for v in row] if spec.kind == problem.MULTI else rows.labels
        unknown = sorted({v for v in given if v not in index})
        if unknown:
            raise DataError(f"labels {unknown[:5]} in {data_uri} are not classes of the model "
                            f"({', '.join(names[:10])})")
        if spec.kind == problem.MULTI:
            targets = np.zeros((len(rows.labels), len(names)), np.float32)
            for r, row in enumerate(rows.labels):
                targets[r, [index[v] for v in row]] = 1.0
        else:
            targets = np.array([index[v] for v in rows.labels], dtype=np.int64)
    metrics = problem.metrics(spec, targets, _as_logits(spec, probs))
    result = {"model": run_uri, "data": data_uri, "evaluation": metrics}
    if output_uri:
        local_file = scratch / "out" / _file_name(output_uri)
        local_file.parent.mkdir(parents=True, exist_ok=True)
        local_file.write_text(json.dumps(result, indent=2) + "\n")
        _put_file(local_file, output_uri)
    return result


def _file_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _put_file(local_file: Path, uri: str) -> None:
    """Copy one local file to the file location `uri` (local or gs://)."""
    from job import storage

    name = _file_name(uri)
    parent = uri.rstrip("/")[: -len(name)].rstrip("/") or "."
    storage.put_files(local_file.parent, [local_file.name], parent)

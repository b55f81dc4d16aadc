"""A Markdown model card for a finished run, built only from its metrics.json.

    from job import modelcard
    (staging / "report" / "README.md").write_text(modelcard.model_card(metrics, run_uri, plots=names))

Pure: the card says nothing that metrics.json does not hold, so it can be regenerated for any old
run from its metrics.json alone. Numbers are printed with 4 decimals, like the job's log lines.
"""

from __future__ import annotations

from typing import Any, Sequence

def _cell(value: Any) -> str:
    # Label names and paths are user data: a '|' or a newline would break the Markdown table.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def model_card(metrics: dict, run_uri: str | None = None, plots: Sequence[str] = ()) -> str:
    """The card as Markdown. `run_uri` (where the run was published) goes into the loading snippet;
    `plots` are PNG paths relative to the card (from job.plots) to embed. Signed-URL signatures and
    tokens in any URI it quotes are redacted, as in the logs and metrics.json: the card is published."""
    from job.logs import redact

    return redact(_card(metrics, run_uri, plots))


def _card(metrics: dict, run_uri: str | None, plots: Sequence[str]) -> str:
    cfg = metrics.get("config", {})
    base = cfg.get("model", {}).get("model", "unknown")
    train_cfg = cfg.get("train", {})
    max_length = cfg.get("model", {}).get("max_length")
    data = metrics.get("data", {})
    final = metrics.get("final_evaluation", {})
    labels = data.get("labels") or list(final.get("per_class", {}))
    where = (run_uri or cfg.get("output", {}).get("output") or "RUN").rstrip("/")

    prob = metrics.get("problem") or {}
    kind = prob.get("problem_type", "single_label")
    if kind != "single_label":
        return _other_card(metrics, run_uri, plots, kind)
    lines = [f"# Model card: text classifier fine-tuned from `{base}`", ""]
    lines += [f"Sequence classification into {len(labels)} classes ({', '.join(f'`{_cell(n)}`' for n in labels)}), "
              f"fine-tuned by finetune-job with TensorFlow/Keras. Run started {metrics.get('started_at', 'unknown')}, "
              f"status: {metrics.get('status', 'unknown')}.", ""]

    # -- provenance: what it was built from
    lines += ["## Base model", "", f"`{base}` (Hugging Face checkpoint; a new classification head of "
              f"{len(labels)} classes was trained on top, the whole network fine-tuned).", ""]
    lines += ["## Data", ""]
    lines += _table(["", "Rows", "Sources"], [
        ["train", data.get("train_examples", "-"), ", ".join(data.get("sources", {}).get("train", [])) or "-"],
        ["validation", data.get("validation_examples", "-"),
         ", ".join(data.get("sources", {}).get("validation", [])) or data.get("validation_source", "-")],
    ])
    lines += ["", f"Validation split: {data.get('validation_source', 'unknown')}. "
              f"Validation fingerprint: `{data.get('validation_fingerprint', 'unknown')}` (a hash of its texts and "
              "labels: runs with the same fingerprint were scored on the same data and can be compared).", ""]
    if metrics.get("data_report"):
        lines += ["What is in the data (label balance, duplicates, train/validation overlap, token lengths): "
                  "[data.md](data.md).", ""]

    lines += ["## Training", ""]
    hp = [[k, _num(v)] for k, v in train_cfg.items()]
    hp += [["max_length (tokens)", _num(max_length)], ["replicas", _num(metrics.get("replicas"))],
           ["global_batch_size", _num(metrics.get("global_batch_size"))],
           ["steps_per_epoch", _num(metrics.get("steps_per_epoch"))]]
    lines += _table(["Hyper-parameter", "Value"], hp)
    lines += ["", "AdamW (no decay on biases and LayerNorm), learning rate warming up linearly for "
              "`warmup_ratio` of the steps, then decaying linearly to 0; loss: cross-entropy on logits.", ""]
    if metrics.get("epochs"):
        lines += _table(["Epoch", "Train loss", "Train accuracy", "Validation loss", "Validation accuracy"],
                        [[e.get("epoch", i + 1), _num(e.get("loss")), _num(e.get("accuracy")), _num(e.get("val_loss")),
                          _num(e.get("val_accuracy"))] for i, e in enumerate(metrics["epochs"])])
        lines += [""]

    lines += _selection_lines(metrics)
    # -- results
    lines += ["## Evaluation (validation split)", ""]
    lines += _table(["Metric", "Value"], [["accuracy", _num(final.get("accuracy"))],
                                          ["macro-F1", _num(final.get("macro_f1"))],
                                          ["loss (cross-entropy)", _num(final.get("loss"))],
                                          ["examples", _num(final.get("examples"))]])
    lines += [""]
    per_class = final.get("per_class", {})
    if per_class:
        lines += _table(["Class", "Precision", "Recall", "F1", "Support"],
                        [[n, _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), c["support"]]
                         for n, c in per_class.items()])
        lines += [""]
    cm = final.get("confusion_matrix")
    if cm and len(cm["labels"]) <= 20:  # beyond that a table is unreadable; the plot shows it
        lines += ["Confusion matrix (rows: true class, columns: predicted):", ""]
        lines += _table(["true \\ predicted", *cm["labels"]],
                        [[n, *row] for n, row in zip(cm["labels"], cm["rows_true_cols_predicted"])])
        lines += [""]
    for p in plots:
        lines += [f"![{p.rsplit('/', 1)[-1].rsplit('.', 1)[0].replace('_', ' ')}]({p})", ""]

    # -- use
    weakest = min(per_class.items(), key=lambda kv: kv[1]["f1"])[0] if per_class else None
    lines += ["## Intended use", "",
              f"Classifying short texts{' (or text pairs)' if cfg.get('data', {}).get('text_pair_column') else ''} "
              f"like those in the training data into exactly these classes: {', '.join(_cell(n) for n in labels)}. "
              "Check it on your own data before relying on it.", ""]
    lines += ["## Limitations", "",
              "- It knows only the classes above: every input gets one of them, however unrelated it is.",
              f"- Texts are truncated to {_num(max_length)} tokens: anything later in a long text is not seen.",
              "- Scores come from one validation split of the same source as the training data; performance on "
              "other domains, languages or time periods is unknown and usually lower.",
              "- Probabilities are the softmax of the logits and are not calibrated: treat them as scores.",
              "- It inherits the biases of the base model's pre-training data and of the labelled data.",
              "- When the validation split decides promotion between runs, its scores are slightly optimistic "
              "for the promoted model."]
    if weakest is not None and len(per_class) > 1:
        lines += [f"- Weakest class on validation: `{_cell(weakest)}` (F1 {_num(per_class[weakest]['f1'])})."]
    lines += [""]

    lines += ["## How to load", ""]
    if where.startswith("gs://"):
        local = "./" + where.rsplit("/", 1)[-1]
        lines += [f"Copy the run locally first: `gcloud storage cp -r {where} .` (then use `{local}`).", ""]
        where = local
    outputs = metrics.get("outputs", {})
    ids_signature = "serving_default"
    if outputs.get("text_signatures"):
        ids_signature = "serve_token_ids"
        parity = outputs.get("parity", {})
        lines += ["SavedModel from raw text (the tokenizer runs in the graph; it gave the training tokenizer's ids "
                  f"on {_num(parity.get('identical'))}/{_num(parity.get('rows'))} validation rows). TF Serving, "
                  f"KServe and Vertex AI load `{where}/serving` (version folder `{outputs.get('serving', 'serving/1')}`):",
                  "", "```python", "import tensorflow as tf", "import tensorflow_text  # registers the tokenizer ops",
                  "", f'serve = tf.saved_model.load("{where}/saved_model").signatures["serving_default"]',
                  'out = serve(text=tf.constant(["a text"]))  # probabilities, logits, label, label_id', "```", ""]
    elif outputs.get("reason"):
        lines += [f"Only token-id signatures were exported ({_cell(outputs['reason'])}): tokenize in the client.", ""]
    lines += ["SavedModel from token ids (TF Serving, Vertex AI; no transformers needed to run it, only for the tokenizer):", "",
              "```python", "import tensorflow as tf", "from transformers import AutoTokenizer", "",
              f'tokenizer = AutoTokenizer.from_pretrained("{where}/hf_model")',
              f'serve = tf.saved_model.load("{where}/saved_model").signatures["{ids_signature}"]',
              "names = serve.structured_input_signature[1]  # input_ids, attention_mask[, token_type_ids]",
              f'enc = tokenizer(["a text"], padding=True, truncation=True, max_length={max_length or 128},',
              '                return_tensors="np")',
              'probs = serve(**{k: tf.constant(v, tf.int32) for k, v in enc.items() if k in names})["probabilities"]',
              "```", "",
              "Keras model (set `TF_USE_LEGACY_KERAS=1` before importing TensorFlow; transformers 4.x):", "",
              "```python", "from transformers import AutoTokenizer, TFAutoModelForSequenceClassification", "",
              f'model = TFAutoModelForSequenceClassification.from_pretrained("{where}/hf_model", use_safetensors=False)',
              "# (model.safetensors beside tf_model.h5 is the PyTorch copy: AutoModelForSequenceClassification)",
              f'tokenizer = AutoTokenizer.from_pretrained("{where}/hf_model")',
              "# model.config.id2label maps class ids to the names above", "```", ""]

    versions = metrics.get("versions", {})
    if versions:
        lines += ["## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def _selection_lines(metrics: dict) -> list[str]:
    """Which epoch was published, with the best and the last figure; class weights when used."""
    sel = metrics.get("selection") or {}
    prob = metrics.get("problem") or {}
    lines = []
    if sel.get("metric") and sel.get("metric") != "last":
        lines += [f"Published epoch: {sel.get('best_epoch')} of {sel.get('last_epoch')}, the best validation "
                  f"`{sel['metric']}` ({'higher' if sel.get('higher_is_better') else 'lower'} is better): "
                  f"{_num(sel.get('best'))} (last epoch: {_num(sel.get('last'))})."
                  + (f" Training stopped early (patience {sel.get('early_stopping_patience')})."
                     if sel.get("stopped_early") else ""), ""]
    elif sel:
        lines += ["Published epoch: the last one (`--select-best last`).", ""]
    if prob.get("class_weights"):
        what = "positive weight per label" if prob.get("problem_type") == "multi_label" else "loss weight per class"
        lines += [f"Class weights (`{_cell(prob.get('class_weight'))}`, {what}): "
                  + ", ".join(f"`{_cell(n)}` {_num(w)}" for n, w in prob["class_weights"].items()) + ".", ""]
    return lines


def _other_card(metrics: dict, run_uri: str | None, plots: Sequence[str], kind: str) -> str:
    """The card of a multi-label or regression run."""
    cfg = metrics.get("config", {})
    base = cfg.get("model", {}).get("model", "unknown")
    max_length = cfg.get("model", {}).get("max_length")
    data = metrics.get("data", {})
    final = metrics.get("final_evaluation", {})
    prob = metrics.get("problem") or {}
    labels = prob.get("labels") or data.get("labels") or []
    where = (run_uri or cfg.get("output", {}).get("output") or "RUN").rstrip("/")
    multi = kind == "multi_label"
    what = (f"multi-label classification over {len(labels)} labels ({', '.join(f'`{_cell(n)}`' for n in labels)}): "
            "each text gets every label whose probability reaches its threshold (none, one or several)"
            if multi else "regression: one score per text")
    lines = [f"# Model card: text {'tagger' if multi else 'scorer'} fine-tuned from `{base}`", "",
             f"Fine-tuned by finetune-job with TensorFlow/Keras for {what}. Run started "
             f"{metrics.get('started_at', 'unknown')}, status: {metrics.get('status', 'unknown')}.", "",
             "## Data", ""]
    lines += _table(["", "Rows", "Sources"], [
        ["train", data.get("train_examples", "-"), ", ".join(data.get("sources", {}).get("train", [])) or "-"],
        ["validation", data.get("validation_examples", "-"),
         ", ".join(data.get("sources", {}).get("validation", [])) or data.get("validation_source", "-")]])
    lines += ["", f"Validation split: {data.get('validation_source', 'unknown')}. Validation fingerprint: "
              f"`{data.get('validation_fingerprint', 'unknown')}`.", ""]
    if multi and prob.get("label_frequencies"):
        lines += ["Training rows per label:", ""]
        lines += _table(["Label", "Rows"], list(prob["label_frequencies"].items())) + [""]
    if not multi and prob.get("target_summary"):
        t = prob["target_summary"]
        lines += [f"Training targets: min {_num(t['min'])}, max {_num(t['max'])}, mean {_num(t['mean'])}, "
                  f"std {_num(t['std'])}.", ""]
    lines += ["## Training", ""]
    lines += _table(["Hyper-parameter", "Value"], [[k, _num(v)] for k, v in cfg.get("train", {}).items()]
                    + [["max_length (tokens)", _num(max_length)]])
    loss = "binary cross-entropy on each label's logit" if multi else "mean squared error of the score"
    lines += ["", f"AdamW with linear warm-up and decay; loss: {loss}.", ""]
    epochs = metrics.get("epochs") or []
    if epochs:
        keys = [k for k in epochs[0] if k != "epoch"]
        lines += _table(["Epoch", *keys], [[e.get("epoch", i + 1), *(_num(e.get(k)) for k in keys)]
                                           for i, e in enumerate(epochs)]) + [""]
    lines += _selection_lines(metrics)
    lines += ["## Evaluation (validation split)", ""]
    names = (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("subset_accuracy", "subset accuracy"),
             ("hamming_loss", "Hamming loss"), ("loss", "loss (binary cross-entropy)"), ("examples", "examples")) \
        if multi else (("pearson", "Pearson"), ("spearman", "Spearman"), ("mse", "MSE"), ("mae", "MAE"),
                       ("examples", "examples"))
    lines += _table(["Metric", "Value"], [[label, _num(final.get(k))] for k, label in names]) + [""]
    if multi:
        tuned = prob.get("thresholds_tuned")
        lines += [("Thresholds tuned per label on the validation split (best micro-F1), so these figures are "
                   "optimistic for new data" if tuned else "Decision threshold per label as configured")
                  + "; serving, `predict` and `evaluate` apply the same ones.", ""]
        at = final.get("at_threshold")
        if at:
            lines += [f"At the single threshold {_num(at['threshold'])}: micro-F1 {_num(at.get('micro_f1'))}, "
                      f"macro-F1 {_num(at.get('macro_f1'))}.", ""]
        per = final.get("per_label", {})
        th = final.get("thresholds", {})
        lines += _table(["Label", "Threshold", "Precision", "Recall", "F1", "Support"],
                        [[n, _num(th.get(n)), _num(c["precision"]), _num(c["recall"]), _num(c["f1"]), c["support"]]
                         for n, c in per.items()]) + [""]
    for p in plots:
        lines += [f"![{p.rsplit('/', 1)[-1].rsplit('.', 1)[0].replace('_', ' ')}]({p})", ""]
    lines += ["## Limitations", "",
              f"- Texts are truncated to {_num(max_length)} tokens.",
              "- Scores come from one validation split of the same source as the training data; other domains "
              "usually score lower.",
              ("- It knows only the labels above; label probabilities are independent sigmoids, not calibrated."
               if multi else "- Scores outside the training range are extrapolations; the output is not clipped."),
              "- It inherits the biases of the base model's pre-training data and of the labelled data.", ""]
    out = "saved_model outputs: `probabilities`, `predicted` (0/1 per label) and `labels` (the name where " \
          "predicted, else empty)" if multi else "saved_model output: `score`"
    lines += ["## How to load", "", f"`{where}/saved_model` ({out}); `{where}/hf_model` for transformers "
              f"(`config.problem_type` is set). `python entrypoint.py predict --model {where} --data FILE "
              "--output predictions.jsonl` applies the stored thresholds.", ""]
    versions = metrics.get("versions", {})
    if versions:
        lines += ["## Software", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)

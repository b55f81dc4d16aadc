"""Contender "seed recipe": the textbook Keras fine-tuning, as a first attempt would write it.

    .venv/bin/python -m bench.seed_recipe --model M --train T --dev D --work W --result R --launched-at $(date +%s.%N)

Tokenize the whole set with padding=True, truncation=True into numpy arrays (every row padded to
the longest row of the set), compile with Adam and a from-logits loss, fit, fp32, no XLA. The model
is loaded with the job's loader (job.model.load_classifier: transformers' own TF loader cannot read
PyTorch safetensors), so both contenders start from the same weights and head initialisation.
"""

from __future__ import annotations

import time

LAUNCHED = time.time()

import os  # noqa: E402

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

from bench.common import Stopwatch, contender_args, label_ids, read_rows, write_result  # noqa: E402


def main(argv=None) -> None:
    a = contender_args(__doc__.splitlines()[0]).parse_args(argv)
    import numpy as np
    import tensorflow as tf
    from transformers import AutoTokenizer

    from bench.tfprobe import StepTimes, matmul_flops
    from job import model as model_step

    watch = Stopwatch()
    tf.keras.utils.set_random_seed(a.seed)
    texts, labels = read_rows(a.train, a.text_column, a.label_column)
    dev_texts, dev_labels = read_rows(a.dev, a.text_column, a.label_column)
    names, (y, y_dev) = label_ids(labels, dev_labels)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    with watch("tokenize"):
        enc = tokenizer(texts, padding=True, truncation=True, max_length=a.max_length, return_tensors="np")
    x = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    with watch("load_model"):
        path = Path(a.model)
        clf = model_step.load_classifier(path, model_step.check_checkpoint(path), tuple(names))
    clf.compile(optimizer=tf.keras.optimizers.Adam(a.learning_rate),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    steps = StepTimes()
    with watch("train"):
        clf.fit(x, np.asarray(y, np.int32), batch_size=a.batch_size, epochs=a.epochs, shuffle=True,
                callbacks=[steps], verbose=2)
    dev = tokenizer(dev_texts, padding=True, truncation=True, max_length=a.max_length, return_tensors="np")
    with watch("evaluate"):
        logits = clf.predict({k: dev[k].astype(np.int32) for k in x}, batch_size=a.batch_size, verbose=0).logits
    with watch("export"):
        clf.save_pretrained(str(Path(a.work) / "model"))
    done_at = time.time()

    real = int(x["attention_mask"].sum()) * a.epochs
    computed = int(x["input_ids"].size) * a.epochs
    train_seconds = watch.seconds["train"]
    examples = len(texts) * a.epochs
    write_result(a.result, {
        "train_examples": examples,
        "train_seconds": train_seconds,
        "examples_per_second": round(examples / train_seconds, 2),
        "real_tokens": real,
        "computed_tokens": computed,
        "padding_fraction": round(1 - real / computed, 4),
        "padded_width": int(x["input_ids"].shape[1]),
        "real_tokens_per_second": round(real / train_seconds, 1),
        "dev_accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(y_dev)).mean()),
        "first_step_seconds": round(steps.durations[0], 3) if steps.durations else None,
        "start_to_first_step_seconds": round(steps.first_done_at - LAUNCHED, 3),
        "launch_to_first_step_seconds": round(steps.first_done_at - a.launched_at, 3),
        "steady_step_seconds": round(float(np.median(steps.durations[1:])), 4) if len(steps.durations) > 1 else None,
        "export_seconds": watch.seconds["export"],
        "tokenize_seconds": watch.seconds["tokenize"],
        "phases_seconds": watch.seconds,
        "launch_to_done_seconds": round(done_at - a.launched_at, 3),
        "matmul_flops": matmul_flops(a.matmul_size),
    })


if __name__ == "__main__":
    main()

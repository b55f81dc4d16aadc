"""Contender "PyTorch peer": Hugging Face `Trainer` on CPU PyTorch with its defaults (AdamW, linear
decay, dynamic padding by DataCollatorWithPadding), run by the virtualenv the benchmark creates:

    bench/.venv-torch/bin/python -m bench.torch_peer --model M --train T --dev D --work W --result R \
        --launched-at $(date +%s.%N)

Same rows, max length, batch size, learning rate, seed and epochs as the others. The matmul probe
here is torch's, for reference only: utilisation is computed against TensorFlow's.
"""

from __future__ import annotations

import time

LAUNCHED = time.time()

from pathlib import Path  # noqa: E402

from bench.common import Stopwatch, contender_args, label_ids, read_rows, write_result  # noqa: E402


def main(argv=None) -> None:
    a = contender_args(__doc__.splitlines()[0]).parse_args(argv)
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments, set_seed)

    watch = Stopwatch()
    set_seed(a.seed)
    texts, labels = read_rows(a.train, a.text_column, a.label_column)
    dev_texts, dev_labels = read_rows(a.dev, a.text_column, a.label_column)
    names, (y, y_dev) = label_ids(labels, dev_labels)
    tokenizer = AutoTokenizer.from_pretrained(a.model)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=a.max_length)

    with watch("tokenize"):
        train_ds = Dataset.from_dict({"text": texts, "label": y}).map(tokenize, batched=True, remove_columns=["text"])
    dev_ds = Dataset.from_dict({"text": dev_texts, "label": y_dev}).map(tokenize, batched=True, remove_columns=["text"])
    with watch("load_model"):
        model = AutoModelForSequenceClassification.from_pretrained(
            a.model, num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)})

    class CountingCollator(DataCollatorWithPadding):
        """The default collator, counting real and computed tokens of the training batches."""
        counting = True
        real = computed = 0

        def __call__(self, features):
            batch = super().__call__(features)
            if self.counting:
                CountingCollator.real += int(batch["attention_mask"].sum())
                CountingCollator.computed += int(batch["input_ids"].numel())
            return batch

    class Steps(TrainerCallback):
        first_done_at = None
        durations: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.durations.append(time.perf_counter() - self._t0)
            if self.first_done_at is None:
                Steps.first_done_at = time.time()

    collator = CountingCollator(tokenizer)
    args = TrainingArguments(output_dir=str(Path(a.work) / "trainer"), per_device_train_batch_size=a.batch_size,
                             per_device_eval_batch_size=a.batch_size, learning_rate=a.learning_rate,
                             num_train_epochs=a.epochs, seed=a.seed, use_cpu=True, report_to="none",
                             save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True)
    steps = Steps()
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=collator, callbacks=[steps])
    with watch("train"):
        trainer.train()
    CountingCollator.counting = False
    with watch("evaluate"):
        logits = trainer.predict(dev_ds).predictions
    with watch("export"):
        trainer.save_model(str(Path(a.work) / "model"))
    done_at = time.time()

    real, computed = CountingCollator.real, CountingCollator.computed
    train_seconds = watch.seconds["train"]
    examples = len(texts) * a.epochs
    n = 2048
    m1, m2 = torch.randn(n, n), torch.randn(n, n) / n ** 0.5
    torch.mm(m1, m2)
    t0 = time.perf_counter()
    for _ in range(10):
        m1 = torch.mm(m1, m2)
    torch_flops = 2 * n ** 3 * 10 / (time.perf_counter() - t0)
    write_result(a.result, {
        "train_examples": examples,
        "train_seconds": train_seconds,
        "examples_per_second": round(examples / train_seconds, 2),
        "real_tokens": real,
        "computed_tokens": computed,
        "padding_fraction": round(1 - real / computed, 4),
        "real_tokens_per_second": round(real / train_seconds, 1),
        "dev_accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(y_dev)).mean()),
        "first_step_seconds": round(steps.durations[0], 3) if steps.durations else None,
        "start_to_first_step_seconds": round(Steps.first_done_at - LAUNCHED, 3),
        "launch_to_first_step_seconds": round(Steps.first_done_at - a.launched_at, 3),
        "steady_step_seconds": round(float(np.median(steps.durations[1:])), 4) if len(steps.durations) > 1 else None,
        "export_seconds": watch.seconds["export"],
        "tokenize_seconds": watch.seconds["tokenize"],
        "phases_seconds": watch.seconds,
        "launch_to_done_seconds": round(done_at - a.launched_at, 3),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "torch_matmul_flops": torch_flops,
    })


if __name__ == "__main__":
    main()

"""A metrics.json-shaped dict for the report modules' tests, with a real final evaluation.

The final evaluation comes from job.evaluation.classification_metrics on fixed labels and logits,
so plots and the model card are tested against the exact structure run.py writes.
"""

from __future__ import annotations

import numpy as np

from job.evaluation import classification_metrics

LABELS = ("negative", "neutral", "positive")


def sample_metrics(epochs: int = 4, fingerprint: str = "0123456789abcdef") -> dict:
    rng = np.random.default_rng(7)
    labels = np.repeat(np.arange(3), [20, 10, 30])
    logits = rng.normal(size=(len(labels), 3))
    logits[np.arange(len(labels)), labels] += 1.5  # mostly right, some errors in every class
    final = classification_metrics(labels, logits, LABELS)
    per_epoch = [{"epoch": i + 1, "loss": 1.1 / (i + 1), "accuracy": 0.5 + 0.1 * i,
                  "val_loss": 1.2 / (i + 1) + 0.05, "val_accuracy": 0.45 + 0.1 * i} for i in range(epochs)]
    return {
        "started_at": "2025-01-02T03:04:05+00:00",
        "status": "complete",
        "replicas": 1,
        "global_batch_size": 16,
        "steps_per_epoch": 5,
        "data": {"train_examples": 80, "validation_examples": len(labels), "labels": list(LABELS),
                 "validation_source": "file", "validation_fingerprint": fingerprint,
                 "sources": {"train": ["gs://in/sst/train.csv"], "validation": ["gs://in/sst/validation.csv"]}},
        "epochs": per_epoch,
        "final_evaluation": final,
        "throughput": {"train_examples_per_second": 123.4, "epoch_seconds": [1.0] * epochs,
                       "first_step_seconds": 0.5},
        "phases_seconds": {"download": 0.1, "train": 4.0},
        "outputs": {"saved_model": "saved_model", "hf_model": "hf_model"},
        "config": {
            "data": {"data": "gs://in/sst", "train": None, "validation": None, "text_column": "text",
                     "text_pair_column": None, "label_column": "label"},
            "model": {"model": "gs://in/models/minilm", "num_labels": None, "max_length": 64},
            "train": {"epochs": epochs, "per_replica_batch_size": 16, "learning_rate": 3e-5,
                      "warmup_ratio": 0.1, "weight_decay": 0.01, "seed": 42},
            "output": {"output": "gs://out/runs/r7", "overwrite": False, "work_dir": ""},
        },
        "versions": {"python": "3.11.7", "tensorflow": "2.21.0", "transformers": "4.57.6"},
    }

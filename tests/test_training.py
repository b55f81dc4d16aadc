"""The loss is built for logits: the same model, data and steps learn with ours and not with a loss
built for probabilities (the bug the product exists to rule out)."""

from __future__ import annotations

import tensorflow as tf

from job import data as data_step
from job import evaluation, features, model as model_step, training
from job.config import DataConfig, ModelConfig, TrainConfig

CFG = TrainConfig(epochs=6, per_replica_batch_size=16, learning_rate=1e-3, warmup_ratio=0.1)


def train_toy(toy_data, checkpoint, tmp_path, wrong_loss: bool) -> float:
    tf.keras.utils.set_random_seed(0)
    d = data_step.load(DataConfig(data=str(toy_data)), None, 0, tmp_path)
    tok = model_step.load_tokenizer(checkpoint, ModelConfig(model="m", max_length=32))
    train_enc = features.encode(d.train, tok, 32)
    val_enc = features.encode(d.validation, tok, 32)
    steps = features.steps_per_epoch(len(train_enc), 16)
    clf = model_step.load_classifier(checkpoint, "tf", d.label_names)
    training.compile_model(clf, CFG, steps * CFG.epochs)
    if wrong_loss:
        clf.compile(optimizer=training.make_optimizer(CFG, steps * CFG.epochs),
                    loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=False))
    clf.fit(features.train_dataset(train_enc, 16, CFG.epochs, 0, 32), epochs=CFG.epochs,
            steps_per_epoch=steps, verbose=0)
    logits = evaluation.predict_logits(clf, val_enc, 32, 32)
    return evaluation.classification_metrics(val_enc.labels, logits, d.label_names)["accuracy"]


def test_logits_loss_learns_and_probability_loss_does_not(toy_data, tiny_checkpoints, tmp_path):
    ours = train_toy(toy_data, tiny_checkpoints["tf"], tmp_path / "a", wrong_loss=False)
    wrong = train_toy(toy_data, tiny_checkpoints["tf"], tmp_path / "b", wrong_loss=True)
    print(f"validation accuracy: from_logits=True {ours:.3f}, from_logits=False {wrong:.3f}")
    assert ours >= 0.9
    assert wrong <= 0.75

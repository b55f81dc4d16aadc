"""The training pipeline, top to bottom: config -> data -> model -> train -> evaluate -> export -> publish.

    python entrypoint.py train --data DATA --model MODEL --output OUTPUT
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from job import (champion, checkpoints, distribution, evaluation, export, features, modelcard, plots, progress,
                 publish, report, storage, tblog, training)
from job import data as data_step
from job import model as model_step
from job.config import JobConfig
from job.errors import TransientError

log = logging.getLogger(__name__)

TENSORBOARD = "tensorboard"
REPORT = "report"


@contextlib.contextmanager
def workspace(cfg: JobConfig):
    """Local scratch for downloads and staging; removed at the end unless the user chose it."""
    if cfg.output.work_dir:
        root = Path(cfg.output.work_dir).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="finetune-job-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(cfg: JobConfig) -> dict | None:
    with training.Preemption().installed() as preemption:
        return _run(cfg, preemption)


def settings_fingerprint(cfg: JobConfig) -> str:
    """What makes two runs the same run: everything but where state and outputs are kept."""
    d = cfg.to_dict()
    d["train"].pop("checkpoint_every")
    d["train"].pop("cluster_timeout")
    return checkpoints.settings_fingerprint({k: d[k] for k in ("data", "model", "train")})


def _run(cfg: JobConfig, preemption: training.Preemption) -> dict | None:
    timer = report.PhaseTimer()
    log.info("config: %s", cfg.to_dict())
    tf.keras.utils.set_random_seed(cfg.train.seed)
    fingerprint = settings_fingerprint(cfg)
    identity = publish.Identity(cfg.output.run_id, fingerprint)
    # Refuse early: hours of training must not end in "output exists" or "not writable". A retry of
    # a run that published just before it was killed finds its own result there: done, not an error.
    if publish.check_output(cfg.output.output, identity, cfg.output.overwrite) is not None:
        earlier = _already_published(cfg.output.output, identity)
        if earlier is not None:
            log.info("%s already holds this run (same settings, published by an earlier attempt)",
                     cfg.output.output)
            if cfg.output.promote_if_better:
                promote(cfg, earlier)  # the attempt may have died between publishing and promoting
            return earlier

    with workspace(cfg) as scratch:
        # -- data and checkpoint: everything validated before the model is built
        with timer("download"):
            data = data_step.load(cfg.data, cfg.model.num_labels, cfg.train.seed, scratch / "data")
            ckpt = model_step.resolve_checkpoint(cfg.model.model, scratch)
            kind = model_step.check_checkpoint(ckpt)
        tokenizer = model_step.load_tokenizer(ckpt, cfg.model)
        log.info("data: %d train / %d validation rows, %d classes (%s); validation %s", len(data.train),
                 len(data.validation), data.num_labels, ", ".join(data.label_names[:10]), data.validation_source)

        # -- runtime
        strategy, topo = distribution.make_strategy(timeout=cfg.train.cluster_timeout)
        global_batch = cfg.train.per_replica_batch_size * topo.replicas
        steps = features.steps_per_epoch(len(data.train), global_batch)
        log.info("replicas: %d, global batch: %d (= %d per replica x %d), %d steps/epoch x %d epochs",
                 topo.replicas, global_batch, cfg.train.per_replica_batch_size, topo.replicas, steps,
                 cfg.train.epochs)

        # -- features
        with timer("tokenize"):
            train_enc = features.encode(data.train, tokenizer, cfg.model.max_length)
            val_enc = features.encode(data.validation, tokenizer, cfg.model.max_length)
        pad_id = tokenizer.pad_token_id or 0

        # Each worker's input pipeline yields its own per-replica batches of one global plan; with
        # XLA, batch widths are rounded up so that only a handful of shapes get compiled.
        multiple = features.pad_multiple(training.jit_compile_enabled(cfg.train))

        def train_ds(epoch: int, skip: int):
            return strategy.distribute_datasets_from_function(lambda ctx: features.train_dataset(
                train_enc, global_batch, cfg.train.epochs, cfg.train.seed, cfg.model.max_length, pad_id,
                initial_epoch=epoch, skip=skip, shard=features.Sharding.from_context(ctx), pad_multiple=multiple))

        val_ds = strategy.distribute_datasets_from_function(lambda ctx: features.validation_dataset(
            val_enc, global_batch, cfg.model.max_length, pad_id, shard=features.Sharding.from_context(ctx),
            pad_multiple=multiple))
        val_steps = features.steps_per_epoch(len(val_enc), global_batch)

        # -- model and optimizer, built inside the strategy so variables are mirrored
        precision = training.set_precision(cfg.train.precision)
        log.info("precision: %s, XLA: %s, steps per execution: %d", precision,
                 "on" if training.jit_compile_enabled(cfg.train) else "off", cfg.train.steps_per_execution)
        with timer("load_model"), strategy.scope():
            clf = model_step.load_classifier(ckpt, kind, data.label_names)
            training.compile_model(clf, cfg.train, total_steps=steps * cfg.train.epochs)

        # -- train, resuming from the last checkpoint of this same run if there is one
        store = checkpoints.CheckpointStore(
            cfg.output.checkpoints, scratch / "checkpoints",
            checkpoints.settings_fingerprint({"run": fingerprint, "data": data.fingerprint("train"),
                                              "validation": data.fingerprint("validation")}),
            enabled=topo.is_chief)
        staging = scratch / "staging"
        staging.mkdir()
        board = tblog.TensorBoardLogger(staging / TENSORBOARD)
        with timer("train"), _peer_loss_is_transient(topo):
            history, meter = training.fit(clf, train_ds, (val_ds, val_steps), cfg.train, steps, store, preemption,
                                          callbacks=[board, progress.ProgressLog(steps * cfg.train.epochs)])

        # Workers of one run must end with identical weights; the digest in each log shows it.
        log.info("final weights digest: %s", export.weights_digest(clf))

        # -- evaluate
        with timer("evaluate"):
            logits = evaluation.predict_logits(clf, val_enc, global_batch, cfg.model.max_length, pad_id)
            final = evaluation.classification_metrics(val_enc.labels, logits, data.label_names)
        log.info("validation: accuracy %.4f, macro-F1 %.4f, loss %.4f", final["accuracy"], final["macro_f1"],
                 final["loss"])

        # -- export and publish
        with timer("export"):
            layout = export.export_all(clf, tokenizer, train_enc.names, staging)
        train_seconds = sum(meter.epoch_seconds)
        metrics = {
            "run_id": cfg.output.run_id,
            "started_at": timer.started.isoformat(),
            "status": "complete",
            "settings_fingerprint": fingerprint,
            "replicas": topo.replicas,
            "workers": topo.workers,
            "cluster_source": topo.source,
            "global_batch_size": global_batch,
            "precision": precision,
            "steps_per_epoch": steps,
            "data": {"train_examples": len(data.train), "validation_examples": len(data.validation),
                     "labels": list(data.label_names), "validation_source": data.validation_source,
                     "validation_fingerprint": data.fingerprint("validation"), "sources": data.sources},
            "epochs": _per_epoch(history),
            "final_evaluation": final,
            "throughput": {
                "train_examples_per_second": round(len(data.train) * cfg.train.epochs / train_seconds, 2)
                if train_seconds else None,
                "epoch_seconds": [round(s, 3) for s in meter.epoch_seconds],
                "first_step_seconds": round(meter.first_step_seconds or 0.0, 3),
            },
            "phases_seconds": timer.seconds,
            "outputs": layout,
            "config": cfg.to_dict(),
            "versions": report.package_versions(),
        }
        report.write_metrics(staging / report.METRICS, metrics)
        with timer("report"):
            write_report(staging, metrics, board.learning_rates, cfg.output.output)

        def record_upload(seconds: float) -> list[str]:
            metrics["phases_seconds"]["upload"] = round(seconds, 3)
            report.write_metrics(staging / report.METRICS, metrics)
            return [report.METRICS]

        if not topo.is_chief:
            # Every worker exports (TF's rule for multi-worker saving); only the chief publishes.
            log.info("worker %d done; the chief publishes the run", topo.worker_index)
            return None
        publish.publish(staging, cfg.output.output, identity, cfg.output.overwrite, finalize=record_upload)
        store.clear()
        log.info("published to %s (accuracy %.4f)", cfg.output.output, final["accuracy"])
        copy_for_platform(cfg, staging)
    if cfg.output.promote_if_better:
        promote(cfg, metrics)
    return metrics


def write_report(staging: Path, metrics: dict, learning_rates: list[float], run_uri: str) -> None:
    """report/: PNG plots and the model card (README.md), part of the published run."""
    folder = staging / REPORT
    folder.mkdir(exist_ok=True)
    plot_files = plots.write_report_plots(metrics, learning_rates, folder)
    (folder / "README.md").write_text(modelcard.model_card(metrics, run_uri, plot_files))


def copy_for_platform(cfg: JobConfig, staging: Path) -> None:
    """Extra copies where a platform looks for them (Vertex AI TensorBoard, SageMaker output data)."""
    for source, dest in ((TENSORBOARD, cfg.output.tensorboard_dir), (REPORT, cfg.output.report_dir)):
        if dest:
            root = staging / source
            names = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
            storage.put_files(root, names, dest)
            log.info("copied %s/ to %s", source, dest)


def promote(cfg: JobConfig, metrics: dict) -> None:
    """Make this run the champion if it is better; record the decision under promotions/."""
    o = cfg.output
    decision = champion.promote_if_better(o.output_root, o.run_id, o.output, metrics, o.promote_if_better,
                                          force=o.force_promotion)
    log.info("promotion: %s -> %s", "promoted" if decision.promote else "not promoted", decision.reason)
    record = {"run": o.run_id, "uri": o.output, "promoted": decision.promote, "reason": decision.reason,
              "spec": o.promote_if_better, "metrics": {k: metrics["final_evaluation"][k]
                                                        for k in ("accuracy", "macro_f1", "loss")}}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{o.run_id}.json").write_text(json.dumps(record, indent=2) + "\n")
        storage.put_files(Path(tmp), [f"{o.run_id}.json"], storage.join(o.output_root, "promotions"))
    metrics["promotion"] = record


@contextlib.contextmanager
def _peer_loss_is_transient(topo: distribution.Topology):
    """A worker that loses a peer mid-training fails in a collective: retry it, do not report a bug."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as exc:
        if topo.workers == 1:
            raise
        raise TransientError(f"lost contact with another worker during training ({type(exc).__name__}); "
                             "all workers resume from the chief's last checkpoint when restarted") from None


def _already_published(output: str, identity: publish.Identity) -> dict | None:
    """The metrics of the run with these settings committed at `output` (finishing what a crashed
    attempt left undone first), else None."""
    manifest = publish.complete(output, identity)
    if manifest is None:
        return None
    return json.loads(publish.read_file(output, manifest, report.METRICS))


def _per_epoch(history: dict) -> list[dict]:
    n = len(next(iter(history.values()), []))
    return [{"epoch": i + 1, **{k: v[i] for k, v in history.items()}} for i in range(n)]

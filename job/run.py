"""The training pipeline, top to bottom: inputs -> runtime -> features -> model -> train -> evaluate
-> export -> report -> publish -> promote. `_run` reads as that list; each phase is a function below it.

    python entrypoint.py train --data DATA --model MODEL --output OUTPUT
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from job import (champion, checkpoints, datareport, distribution, evaluation, export, features, logs, modelcard,
                 plots, problem, progress, publish, report, selection, storage, tblog, training)
from job import config
from job import data as data_step
from job import labels
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
        # Checkpoints and the SavedModel are read back from here: through a link if the name has wildcards.
        with storage.tf_readable(scratch) as usable:
            yield usable
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """What a caller may add to a run without patching the job (the benchmark uses both)."""

    # Extra Keras callbacks given to fit (e.g. a per-step timer).
    callbacks: tuple = ()
    # Called once after training with the trained run's parts (features, plan, model, meter).
    on_trained: Callable[["Trained"], None] | None = None
    # Pad batch widths to this multiple instead of the one --jit-compile implies (a benchmark lever).
    pad_multiple: int | None = None


@dataclasses.dataclass
class Inputs:
    """Phase 1's result: validated data, the checkpoint folder and its tokenizer."""

    data: data_step.LabelledData
    checkpoint: Path
    kind: str  # "tf" or "safetensors"
    tokenizer: object
    spec: problem.ProblemSpec  # the problem type, its labels and (multi-label) thresholds
    class_weights: list[float] | None  # per class (single-label) or per label's positives (multi-label)


@dataclasses.dataclass
class Runtime:
    strategy: tf.distribute.Strategy
    topology: distribution.Topology
    global_batch: int
    steps_per_epoch: int


@dataclasses.dataclass
class Features:
    train: features.Encoded
    validation: features.Encoded
    pad_id: int
    pad_multiple: int
    max_length: int = 0  # the truncation length used (--max-length auto resolved)
    train_lengths: object = None  # training rows' token counts before truncation (datareport)
    limit: int | None = None  # the model's longest input, if it states one


@dataclasses.dataclass
class Trained:
    model: object
    history: dict
    meter: training.Throughput
    features: Features
    runtime: Runtime
    precision: str
    cfg: JobConfig
    selection: dict | None = None  # job.selection.BestEpoch.summary(): which epoch was kept


def run(cfg: JobConfig, hooks: Hooks | None = None) -> dict | None:
    # The dtype policy is process-wide: a caller's (a notebook's, a test runner's) is theirs again after.
    policy = tf.keras.mixed_precision.global_policy()
    try:
        with training.Preemption().installed() as preemption:
            return _run(cfg, preemption, hooks or Hooks())
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)


def settings_fingerprint(cfg: JobConfig) -> str:
    """What makes two runs the same run: everything but where state and outputs are kept."""
    d = cfg.to_dict()
    d["train"].pop("checkpoint_every")
    d["train"].pop("cluster_timeout")
    return checkpoints.settings_fingerprint({k: d[k] for k in ("data", "model", "train")})


def _run(cfg: JobConfig, preemption: training.Preemption, hooks: Hooks) -> dict | None:
    timer = report.PhaseTimer()
    log.info("config: %s", cfg.to_dict())
    tf.keras.utils.set_random_seed(cfg.train.seed)
    identity = publish.Identity(cfg.output.run_id, settings_fingerprint(cfg))
    # Refuse early: hours of training must not end in "output exists" or "not writable". A retry of
    # a run that published just before it was killed finds its own result there: done, not an error.
    if (earlier := _published_earlier(cfg, identity)) is not None:
        return earlier
    with workspace(cfg) as scratch:
        inputs = load_inputs(cfg, scratch, timer)
        preemption.check()
        finished = trained_earlier(cfg, identity, inputs)
        runtime = build_runtime(cfg, inputs, finished)
        if finished is not None and not runtime.topology.is_chief:
            log.info("worker %d: training of this run ended in an earlier attempt; the chief publishes the run",
                     runtime.topology.worker_index)
            return None
        feats = tokenize(cfg, inputs, timer)
        preemption.check()
        cfg, data_report = report_data(cfg, inputs, feats)
        if hooks.pad_multiple:
            feats.pad_multiple = hooks.pad_multiple
        model, precision = build_model(cfg, inputs, runtime, timer)
        preemption.check()
        staging = scratch / "staging"
        staging.mkdir()
        board = tblog.TensorBoardLogger(staging / TENSORBOARD)
        store = checkpoint_store(cfg, identity, inputs, runtime, scratch)
        trained = train(cfg, model, feats, runtime, precision, store, preemption, timer, inputs.spec,
                        callbacks=(board, progress.ProgressLog(runtime.steps_per_epoch * cfg.train.epochs),
                                   *hooks.callbacks))
        if hooks.on_trained:
            hooks.on_trained(trained)
        final, spec = evaluate(trained, inputs, timer)
        with timer("export"), logs.native_sorted():
            problem.annotate_config(model.config, spec)
            val = inputs.data.validation
            layout = export.export_all(model, inputs.tokenizer, feats.train.names, staging, cfg.model.max_length,
                                       val.texts, val.pairs, spec=spec)
        metrics = report.run_metrics(cfg, identity.fingerprint, timer, inputs.data, trained, final, layout)
        metrics["data_report"] = data_report
        metrics.update(problem_report(inputs, spec, trained))
        write_outputs(staging, cfg, metrics, board.learning_rates, timer)
        if not runtime.topology.is_chief:
            # Every worker exports (TF's rule for multi-worker saving); only the chief publishes.
            wait_for_chief(cfg, identity, store)
            log.info("worker %d done; the chief publishes the run", runtime.topology.worker_index)
            return None
        publish_run(cfg, identity, staging, metrics, store)
    if cfg.output.promote_if_better:
        promote(cfg, metrics)
    return metrics


# -- phases, in the order they run

def _published_earlier(cfg: JobConfig, identity: publish.Identity) -> dict | None:
    if publish.check_output(cfg.output.output, identity, cfg.output.overwrite) is None:
        return None
    earlier = _already_published(cfg.output.output, identity)
    if earlier is not None:
        log.info("%s already holds this run (same settings, published by an earlier attempt)", cfg.output.output)
        if cfg.output.promote_if_better:
            promote(cfg, earlier)  # the attempt may have died between publishing and promoting
    return earlier


def load_inputs(cfg: JobConfig, scratch: Path, timer: report.PhaseTimer) -> Inputs:
    """Data and checkpoint, everything validated before the model is built."""
    with timer("download"):
        data = data_step.load(cfg.data, cfg.model.num_labels, cfg.train.seed, scratch / "data")
        ckpt = model_step.resolve_checkpoint(cfg.model.model, scratch)
        kind = model_step.check_checkpoint(ckpt)
    # `auto` is decided by the data: a metric that does not fit it is refused now, before training.
    problem.check_fits(data.problem, cfg.train, cfg.output.promote_if_better)
    spec = problem.make_spec(data.problem, data.label_names, cfg.train.threshold)
    weights = problem.class_weights(spec, cfg.train.class_weight, data.train.labels)
    tokenizer = model_step.load_tokenizer(ckpt, cfg.model)
    log.info("data: %d train / %d validation rows, %s with %d outputs (%s); validation %s", len(data.train),
             len(data.validation), data.problem, data.num_labels, ", ".join(data.label_names[:10]),
             data.validation_source)
    if weights is not None:
        log.info("class weights (%s): %s", cfg.train.class_weight,
                 ", ".join(f"{n} {w:.3g}" for n, w in zip(data.label_names[:20], weights)))
    return Inputs(data, ckpt, kind, tokenizer, spec, weights)


def trained_earlier(cfg: JobConfig, identity: publish.Identity, inputs: Inputs) -> dict | None:
    """The checkpoint state of this multi-worker run if an earlier attempt trained it to the end.

    Chief-retry recovery: when the chief fails after training (exporting, publishing), the other
    workers have exited 0 and will not come back (an Indexed Job keeps succeeded indexes; a JobSet
    restarts them, and they see this too and exit 0). Its retry must then not wait for peers: the
    model is in the final checkpoint, so it finishes alone (build_runtime). One machine needs no such
    test: fit() resumes at the last step and trains nothing."""
    if distribution.resolve_cluster(os.environ).tf_config is None:
        return None
    return checkpoints.finished_training(cfg.output.checkpoints, state_fingerprint(identity, inputs))


def build_runtime(cfg: JobConfig, inputs: Inputs, finished: dict | None = None) -> Runtime:
    if finished is not None:
        plan = finished["plan"]
        strategy, topo = distribution.strategy_after_training(plan)
        log.info("training complete at step %d of %d (checkpoint %s): no training, evaluating and exporting the "
                 "trained model", finished["step"], plan["total_steps"], cfg.output.checkpoints)
        return Runtime(strategy, topo, int(plan["global_batch"]), int(plan["steps_per_epoch"]))
    strategy, topo = distribution.make_strategy(timeout=cfg.train.cluster_timeout)
    global_batch = cfg.train.per_replica_batch_size * topo.replicas
    steps = features.steps_per_epoch(len(inputs.data.train), global_batch)
    log.info("replicas: %d, global batch: %d (= %d per replica x %d), %d steps/epoch x %d epochs",
             topo.replicas, global_batch, cfg.train.per_replica_batch_size, topo.replicas, steps, cfg.train.epochs)
    return Runtime(strategy, topo, global_batch, steps)


def tokenize(cfg: JobConfig, inputs: Inputs, timer: report.PhaseTimer) -> Features:
    """Token ids at --max-length; training rows are counted up to the model's limit on the way, for
    the data report and --max-length auto."""
    limit = model_step.length_limit(inputs.checkpoint, inputs.tokenizer)
    requested = cfg.model.max_length
    ceiling = limit or max(datareport.UNKNOWN_LIMIT_CAP, 0 if requested == "auto" else requested)
    with timer("tokenize"):
        full = features.encode(inputs.data.train, inputs.tokenizer, ceiling)
        lengths = full.lengths
        max_length = datareport.choose_max_length(lengths, limit) if requested == "auto" else requested
        train_enc = features.truncate(full, inputs.data.train, inputs.tokenizer, max_length)
        del full
        val_enc = features.encode(inputs.data.validation, inputs.tokenizer, max_length)
    # With XLA, batch widths are rounded up so that only a handful of shapes get compiled.
    multiple = features.pad_multiple(training.jit_compile_enabled(cfg.train))
    return Features(train_enc, val_enc, inputs.tokenizer.pad_token_id or 0, multiple, max_length, lengths, limit)


def report_data(cfg: JobConfig, inputs: Inputs, feats: Features) -> tuple[JobConfig, dict]:
    """The data report (logged in one line; report/data.md, metrics.json), --max-leakage enforced,
    and the config with --max-length auto resolved to the length chosen."""
    rep = datareport.build(inputs.data, feats.train_lengths, feats.max_length, cfg.model.max_length, feats.limit)
    log.info("%s", datareport.summary_line(rep))
    datareport.check_leakage(rep, cfg.data.max_leakage)
    if cfg.model.max_length == "auto":
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_length=feats.max_length))
    return cfg, rep


def build_model(cfg: JobConfig, inputs: Inputs, runtime: Runtime, timer: report.PhaseTimer):
    """The classifier and its optimizer, built inside the strategy so that variables are mirrored."""
    precision = training.set_precision(cfg.train.precision)
    log.info("precision: %s, XLA: %s, steps per execution: %d", precision,
             "on" if training.jit_compile_enabled(cfg.train) else "off", cfg.train.steps_per_execution)
    with timer("load_model"), runtime.strategy.scope():
        mean = (float(np.mean(inputs.data.train.labels)) if inputs.spec.kind == problem.REGRESSION
                and len(inputs.data.train) else None)
        clf = model_step.load_classifier(inputs.checkpoint, inputs.kind, inputs.data.label_names, mean)
        training.compile_model(clf, cfg.train, total_steps=runtime.steps_per_epoch * cfg.train.epochs,
                               spec=inputs.spec, class_weights=inputs.class_weights)
    return clf, precision


def checkpoint_store(cfg: JobConfig, identity: publish.Identity, inputs: Inputs, runtime: Runtime,
                     scratch: Path) -> checkpoints.CheckpointStore:
    """Training state of this same run (settings and data): resumed from, and saved to."""
    topo = runtime.topology
    plan = {"total_steps": runtime.steps_per_epoch * cfg.train.epochs, "steps_per_epoch": runtime.steps_per_epoch,
            "global_batch": runtime.global_batch, "replicas": topo.replicas, "workers": topo.workers}
    return checkpoints.CheckpointStore(cfg.output.checkpoints, scratch / "checkpoints",
                                       state_fingerprint(identity, inputs), enabled=topo.is_chief, plan=plan)


def state_fingerprint(identity: publish.Identity, inputs: Inputs) -> str:
    """What a checkpoint must match to be resumed: this run's settings and data."""
    data = inputs.data
    return checkpoints.settings_fingerprint({"run": identity.fingerprint, "data": data.fingerprint("train"),
                                             "validation": data.fingerprint("validation")})


def wait_for_chief(cfg: JobConfig, identity: publish.Identity, store: checkpoints.CheckpointStore) -> None:
    """A non-chief worker exits 0 only once the chief's final checkpoint is durable (or the run is
    published): from then on a failed chief's retry can finish alone (trained_earlier). If the chief
    dies before that, this worker fails too (75) and the whole cluster resumes together from the
    chief's last checkpoint, as after any lost peer."""
    deadline = time.monotonic() + cfg.train.cluster_timeout
    while checkpoints.finished_training(store.uri, store.fingerprint) is None:
        manifest, _ = publish.read_manifest(cfg.output.output)
        if manifest is not None and manifest.get("settings_fingerprint") == identity.fingerprint:
            return
        if time.monotonic() > deadline:
            raise TransientError(f"the chief's final checkpoint did not appear in {store.uri} within "
                                 f"{cfg.train.cluster_timeout:.0f}s; all workers resume from its last checkpoint "
                                 "when restarted")
        time.sleep(1.0)


def train(cfg: JobConfig, model, feats: Features, runtime: Runtime, precision: str,
          store: checkpoints.CheckpointStore, preemption: training.Preemption, timer: report.PhaseTimer,
          spec: problem.ProblemSpec, callbacks: tuple) -> Trained:
    """Fit, resuming from the last checkpoint of this same run if there is one; the model ends with
    the weights of the epoch --select-best chose."""
    strategy, t, m = runtime.strategy, cfg.train, cfg.model

    # Each worker's input pipeline yields its own per-replica batches of one global plan.
    def train_ds(epoch: int, skip: int):
        return strategy.distribute_datasets_from_function(lambda ctx: features.train_dataset(
            feats.train, runtime.global_batch, t.epochs, t.seed, m.max_length, feats.pad_id, initial_epoch=epoch,
            skip=skip, shard=features.Sharding.from_context(ctx), pad_multiple=feats.pad_multiple))

    val_ds = strategy.distribute_datasets_from_function(lambda ctx: features.validation_dataset(
        feats.validation, runtime.global_batch, m.max_length, feats.pad_id,
        shard=features.Sharding.from_context(ctx), pad_multiple=feats.pad_multiple))
    val_steps = features.steps_per_epoch(len(feats.validation), runtime.global_batch)
    best = best_epoch_watch(cfg, model, feats, runtime, spec)
    with timer("train"), _peer_loss_is_transient(runtime.topology):
        history, meter = training.fit(model, train_ds, (val_ds, val_steps), t, runtime.steps_per_epoch, store,
                                      preemption, callbacks=list(callbacks), selection=best)
    # Workers of one run must end with identical weights; the digest in each log shows it.
    log.info("final weights digest: %s", export.weights_digest(model))
    return Trained(model, history, meter, feats, runtime, precision, cfg, best.summary() if best else None)


def best_epoch_watch(cfg: JobConfig, model, feats: Features, runtime: Runtime, spec: problem.ProblemSpec
                     ) -> selection.BestEpoch | None:
    """The --select-best / --early-stopping watcher; metrics Keras lacks are computed per epoch with
    the final evaluation's own code, on the validation split."""
    metric = problem.selected_metric(cfg.train, cfg.output.promote_if_better)
    if metric == problem.LAST:
        return None

    def score(m) -> dict[str, float]:
        with export.float32_scope(m):  # scored as the final evaluation and the export compute
            logits = evaluation.predict_logits(m, feats.validation, runtime.global_batch, cfg.model.max_length,
                                               feats.pad_id)
        return problem.scalars(problem.metrics(spec, feats.validation.labels, logits))

    return selection.BestEpoch(metric, problem.direction(metric), {}, score=score,
                               patience=cfg.train.early_stopping_patience,
                               min_delta=cfg.train.early_stopping_min_delta)


def evaluate(trained: Trained, inputs: Inputs, timer: report.PhaseTimer) -> tuple[dict, problem.ProblemSpec]:
    """The final validation metrics, and the spec to publish (multi-label thresholds tuned here)."""
    f, cfg, spec = trained.features, trained.cfg, inputs.spec
    with timer("evaluate"):
        # Scored as published: the export computes in float32 (job.export.float32_compute).
        if export.float32_compute(trained.model):
            log.info("trained in %s; evaluated and exported computing in float32", trained.precision)
        logits = evaluation.predict_logits(trained.model, f.validation, trained.runtime.global_batch,
                                           cfg.model.max_length, f.pad_id)
        untuned = problem.metrics(spec, f.validation.labels, logits)
        final = untuned
        if spec.kind == problem.MULTI and cfg.train.tune_thresholds:
            tuned = problem.tune_thresholds(f.validation.labels > 0.5, problem.sigmoid(logits), cfg.train.threshold)
            spec = dataclasses.replace(spec, thresholds=tuple(tuned), tuned=True)
            final = problem.metrics(spec, f.validation.labels, logits)
            final["at_threshold"] = {"threshold": cfg.train.threshold, **problem.scalars(untuned)}
    log.info("validation: %s", ", ".join(f"{k} {v:.4f}" for k, v in problem.scalars(final).items()))
    return final, spec


def problem_report(inputs: Inputs, spec: problem.ProblemSpec, trained: Trained) -> dict:
    """metrics.json's problem and selection sections (the model card and plots read them)."""
    data = inputs.data
    return {"problem": {**spec.to_dict(), "label_frequencies": labels.frequencies(spec.kind, data.train.labels,
                                                                                  spec.label_names),
                        "target_summary": labels.describe_targets(spec.kind, data.train.labels),
                        "class_weight": trained.cfg.train.class_weight,
                        "class_weights": dict(zip(spec.label_names, inputs.class_weights))
                        if inputs.class_weights is not None else None},
            "selection": trained.selection or {"metric": problem.LAST, "best_epoch": len(per_epoch_of(trained))}}


def per_epoch_of(trained: Trained) -> list:
    return next(iter(trained.history.values()), [])


def write_outputs(staging: Path, cfg: JobConfig, metrics: dict, learning_rates: list[float],
                  timer: report.PhaseTimer) -> None:
    """metrics.json, config.json (the resolved config, as the Model Garden keeps it beside its
    outputs) and report/ into the staging folder."""
    report.write_metrics(staging / report.METRICS, metrics)
    report.write_metrics(staging / report.CONFIG, cfg.to_dict())
    with timer("report"):
        write_report(staging, metrics, learning_rates, cfg.output.output)


def publish_run(cfg: JobConfig, identity: publish.Identity, staging: Path, metrics: dict,
                store: checkpoints.CheckpointStore) -> None:
    def record_upload(seconds: float) -> list[str]:
        metrics["phases_seconds"]["upload"] = round(seconds, 3)
        report.write_metrics(staging / report.METRICS, metrics)
        return [report.METRICS]

    publish.publish(staging, cfg.output.output, identity, cfg.output.overwrite, finalize=record_upload)
    store.clear()
    log.info("published to %s (%s)", cfg.output.output, ", ".join(
        f"{k} {v:.4f}" for k, v in problem.scalars(metrics["final_evaluation"]).items()
        if k in problem.FITTING[metrics["problem"]["problem_type"]]))
    copy_for_platform(cfg, staging)


def write_report(staging: Path, metrics: dict, learning_rates: list[float], run_uri: str) -> None:
    """report/: PNG plots and the model card (README.md), part of the published run."""
    folder = staging / REPORT
    folder.mkdir(exist_ok=True)
    plot_files = plots.write_report_plots(metrics, learning_rates, folder)
    if metrics.get("data_report"):
        (folder / "data.md").write_text(datareport.markdown(metrics["data_report"]))
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
              "spec": o.promote_if_better, "metrics": {k: v for k, v in metrics["final_evaluation"].items()
                                                        if k in config.PROMOTION_METRICS}}
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

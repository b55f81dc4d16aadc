"""finetune-job's command line.

    python entrypoint.py train --data gs://b/sst2/ --model bert-base-cased --output gs://b/runs/r1

Every option can also be set by the environment variable shown in `--help` (what the Kubernetes
manifests use); a flag wins over its variable, which wins over the default. Errors are mapped to
exit codes here and only here (see job/errors.py and the README's table).
"""

from __future__ import annotations

import os

# transformers' TF models need Keras 2 (tf-keras); set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The job is TensorFlow only and must never import torch: with a torch installed beside TF (a CUDA
# build pulls in triton), transformers and datasets import it into the TF process, which segfaults.
# Set, not defaulted: read once when transformers/datasets are first imported.
os.environ["USE_TORCH"] = "0"
os.environ["USE_TF"] = "1"

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from job.config import DataConfig, ModelConfig, TrainConfig
from job.errors import ExitCode, JobError

# Plain (not rich) help and errors: pod logs get one readable line, not a box of box-drawing characters.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  help="Fine-tune a pretrained Hugging Face transformer for text classification.")
log = logging.getLogger("finetune-job")

DATA, MODEL, TRAIN, OUT = "Data", "Model", "Training", "Output"


def _opt(envvar: str, help: str, panel: str, *names: str):
    return typer.Option(*names, envvar=envvar, help=help, rich_help_panel=panel)


@app.callback()
def main(
    log_format: Annotated[str, typer.Option(envvar="FT_LOG_FORMAT", help="text, or json: one object per line with severity and message (Cloud Logging).")] = "text",
    log_level: Annotated[str, typer.Option(envvar="FT_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Fine-tune a pretrained Hugging Face transformer for text classification."""
    from job.logs import setup_logging

    try:
        # Run as a program (not imported by a test): also take over what TensorFlow and other
        # libraries print; in json format this forks a forwarding parent (see job/logs.py).
        setup_logging(log_format, log_level, own_process=__name__ == "__main__")
    except JobError as exc:
        typer.echo(f"error: {exc} (--log-format/--log-level)", err=True)
        raise typer.Exit(int(ExitCode.USAGE)) from None


@app.command()
def train(
    ctx: typer.Context,
    model: Annotated[str, _opt("FT_MODEL", "Pretrained checkpoint: hub id, local folder or gs:// folder.", MODEL)] = "",
    output: Annotated[str, _opt("FT_OUTPUT", "Where the finished run is published: local folder or gs:// prefix.", OUT)] = "",
    data: Annotated[Optional[str], _opt("FT_DATA", "Folder/prefix holding train.* and validation.* or dev.* (files or folders of shards).", DATA)] = None,
    train: Annotated[Optional[str], _opt("FT_TRAIN", "Training file or folder of shards (overrides --data).", DATA)] = None,
    validation: Annotated[Optional[str], _opt("FT_VALIDATION", "Validation file or folder (overrides --data); carved from train when absent.", DATA)] = None,
    text_column: Annotated[str, _opt("FT_TEXT_COLUMN", "Text column name (0-based position with --no-header).", DATA)] = DataConfig.text_column,
    text_pair_column: Annotated[Optional[str], _opt("FT_TEXT_PAIR_COLUMN", "Optional second text column, for sentence pairs.", DATA)] = None,
    label_column: Annotated[str, _opt("FT_LABEL_COLUMN", "Label column: integer ids or names.", DATA)] = DataConfig.label_column,
    header: Annotated[bool, _opt("FT_HEADER", "CSV/TSV files start with a header row; with --no-header, columns are positions.", DATA)] = True,
    data_format: Annotated[str, _opt("FT_FORMAT", "auto (from the file name), csv, tsv, jsonl, json, parquet or arrow.", DATA, "--format")] = DataConfig.data_format,
    validation_fraction: Annotated[float, _opt("FT_VALIDATION_FRACTION", "Share of train held out when no validation split exists.", DATA)] = DataConfig.validation_fraction,
    max_train_examples: Annotated[Optional[int], _opt("FT_MAX_TRAIN_EXAMPLES", "Train on a random subset of this many rows.", DATA)] = None,
    encoding: Annotated[str, _opt("FT_ENCODING", "Text file encoding: auto (UTF-8 with or without BOM, UTF-16 with BOM) or a codec name (cp1252, latin-1, ...).", DATA)] = DataConfig.encoding,
    quoting: Annotated[str, _opt("FT_QUOTING", "CSV/TSV quoting: auto (RFC 4180 when the file reads consistently with it), csv or none (quotes are text).", DATA)] = DataConfig.quoting,
    delimiter: Annotated[str, _opt("FT_DELIMITER", "CSV/TSV delimiter: auto (sniffed for .csv from the header), ',', ';', '|' or tab.", DATA)] = DataConfig.delimiter,
    json_field: Annotated[Optional[str], _opt("FT_JSON_FIELD", "JSON document: the top-level key holding the array of rows.", DATA)] = None,
    max_leakage: Annotated[Optional[float], _opt("FT_MAX_LEAKAGE", "Fail (exit 3) when more than this share of validation rows also occur in train.", DATA)] = None,
    problem_type: Annotated[str, _opt("FT_PROBLEM_TYPE", "auto (multi_label when labels are lists or --label-separator is given, else single_label), single_label, multi_label or regression.", DATA)] = DataConfig.problem_type,
    label_separator: Annotated[Optional[str], _opt("FT_LABEL_SEPARATOR", "Multi-label labels as one delimited string, e.g. ',' or '|'.", DATA)] = None,
    num_labels: Annotated[Optional[int], _opt("FT_NUM_LABELS", "Number of classes; inferred from the training labels when absent.", MODEL)] = None,
    max_length: Annotated[str, _opt("FT_MAX_LENGTH", "Truncate texts to this many tokens; auto: the smallest multiple of 8 covering 99% of training rows (capped at the model's limit).", MODEL)] = str(ModelConfig.max_length),
    epochs: Annotated[int, _opt("FT_EPOCHS", "Passes over the training data.", TRAIN)] = TrainConfig.epochs,
    per_replica_batch_size: Annotated[int, _opt("FT_PER_REPLICA_BATCH_SIZE", "Batch size per device; global batch = this x replicas.", TRAIN)] = TrainConfig.per_replica_batch_size,
    learning_rate: Annotated[float, _opt("FT_LEARNING_RATE", "Peak learning rate, reached after warm-up.", TRAIN)] = TrainConfig.learning_rate,
    warmup_ratio: Annotated[float, _opt("FT_WARMUP_RATIO", "Share of steps with linear warm-up before linear decay to 0.", TRAIN)] = TrainConfig.warmup_ratio,
    weight_decay: Annotated[float, _opt("FT_WEIGHT_DECAY", "AdamW decoupled weight decay (not on biases/LayerNorm).", TRAIN)] = TrainConfig.weight_decay,
    seed: Annotated[int, _opt("FT_SEED", "Seed for shuffling, the validation carve and initialisation.", TRAIN)] = TrainConfig.seed,
    checkpoint_every: Annotated[int, _opt("FT_CHECKPOINT_EVERY", "Save training state every N steps (and each epoch); 0: epochs only.", TRAIN)] = TrainConfig.checkpoint_every,
    cluster_timeout: Annotated[int, _opt("FT_CLUSTER_TIMEOUT", "Multi-worker: seconds to wait for peers before failing.", TRAIN)] = TrainConfig.cluster_timeout,
    precision: Annotated[str, _opt("FT_PRECISION", "auto (bf16 on GPUs of compute capability 8.0+, fp16 with loss scaling on 7.x, else fp32; on CPU bf16 with AVX512-BF16/AMX, else fp32), fp32, bf16 or fp16; head, logits and loss stay float32.", TRAIN)] = TrainConfig.precision,
    jit_compile: Annotated[str, _opt("FT_JIT_COMPILE", "XLA-compile the train step: auto (on with GPUs), on or off.", TRAIN)] = TrainConfig.jit_compile,
    steps_per_execution: Annotated[int, _opt("FT_STEPS_PER_EXECUTION", "Optimizer steps per call into the compiled step (callbacks run every N steps).", TRAIN)] = TrainConfig.steps_per_execution,
    embedding_updates: Annotated[str, _opt("FT_EMBEDDING_UPDATES", "How the input embeddings learn: dense (every row, every step) or frozen (kept as pretrained).", TRAIN)] = TrainConfig.embedding_updates,
    select_best: Annotated[str, _opt("FT_SELECT_BEST", "Publish the epoch with the best validation METRIC (loss, accuracy, macro_f1, micro_f1, pearson, spearman, mse) or 'last'; default: the promotion metric, else loss.", TRAIN)] = TrainConfig.select_best,
    early_stopping_patience: Annotated[int, _opt("FT_EARLY_STOPPING_PATIENCE", "Stop after N epochs without improvement of the --select-best metric; 0: off.", TRAIN)] = TrainConfig.early_stopping_patience,
    early_stopping_min_delta: Annotated[float, _opt("FT_EARLY_STOPPING_MIN_DELTA", "Smallest change that counts as an improvement.", TRAIN)] = TrainConfig.early_stopping_min_delta,
    class_weight: Annotated[str, _opt("FT_CLASS_WEIGHT", "none, balanced, or JSON {label: weight}: class weights (single-label) or positive weights per label (multi-label).", TRAIN)] = TrainConfig.class_weight,
    threshold: Annotated[float, _opt("FT_THRESHOLD", "Multi-label decision threshold on each label's probability.", TRAIN)] = TrainConfig.threshold,
    tune_thresholds: Annotated[bool, _opt("FT_TUNE_THRESHOLDS", "Multi-label: choose per-label thresholds on validation (best micro-F1); stored with the model.", TRAIN)] = TrainConfig.tune_thresholds,
    checkpoint_dir: Annotated[str, _opt("FT_CHECKPOINT_DIR", "Where training state is kept for resuming (default: OUTPUT/.finetune-job/checkpoints).", OUT)] = "",
    output_root: Annotated[str, _opt("FT_OUTPUT_ROOT", "Retraining root: the run goes to ROOT/runs/RUN_ID, the champion pointer is ROOT/champion.json.", OUT)] = "",
    run_id: Annotated[str, _opt("FT_RUN_ID", "Name of the run (default: UTC time + random suffix); keep it across retries.", OUT)] = "",
    promote_if_better: Annotated[str, _opt("FT_PROMOTE_IF_BETTER", "METRIC[:MIN_DELTA] (accuracy, macro_f1, loss; micro_f1 multi-label; pearson, spearman, mse regression): become the champion only if better.", OUT)] = "",
    force_promotion: Annotated[bool, _opt("FT_FORCE_PROMOTION", "Promote even if the validation data differ from the champion's.", OUT)] = False,
    tensorboard_dir: Annotated[str, _opt("FT_TENSORBOARD_DIR", "Also copy the TensorBoard events here (Vertex AI: AIP_TENSORBOARD_LOG_DIR).", OUT)] = "",
    report_dir: Annotated[str, _opt("FT_REPORT_DIR", "Also copy report/ here (SageMaker: SM_OUTPUT_DATA_DIR).", OUT)] = "",
    overwrite: Annotated[bool, _opt("FT_OVERWRITE", "Replace a completed run already at --output.", OUT)] = False,
    work_dir: Annotated[str, _opt("FT_WORK_DIR", "Local scratch for downloads and staging (default: a temp folder).", OUT)] = "",
) -> None:
    """Fine-tune MODEL on labelled text and publish the model, SavedModel and metrics to OUTPUT."""

    def go() -> None:
        from job.config import from_cli
        from job.run import Hooks, run

        # Compared by name: typer vendors click, so its ParameterSource enum is not importable stably.
        given = {name for name in ctx.params if ctx.get_parameter_source(name).name != "DEFAULT"}
        # A caller that invokes the app in-process (the benchmark) may pass Hooks as click's `obj`.
        run(from_cli(ctx.params, given, os.environ), ctx.obj if isinstance(ctx.obj, Hooks) else None)

    _exit_with(go)


def _score_config(model: str, data: str, output: str | None, needs_output: bool, text_column: str,
                  text_pair_column: str | None, label_column: str, header: bool, data_format: str, batch_size: int,
                  max_length: int | None, reading: dict | None = None, label_separator: str | None = None):
    from job.config import DataConfig, ScoreConfig
    from job.formats import check_options

    reading = reading or {}
    check_options(reading.get("encoding", "auto"), reading.get("quoting", "auto"), reading.get("delimiter", "auto"))
    return ScoreConfig(model=model, data=data, output=output or None, needs_output=needs_output,
                       rows=DataConfig(text_column=text_column, text_pair_column=text_pair_column,
                                       label_column=label_column, header=header, data_format=data_format,
                                       label_separator=label_separator, **reading),
                       batch_size=batch_size, max_length=max_length)


RunOpt = Annotated[str, typer.Option("--model", envvar="FT_MODEL", help="A run folder (local or gs://), or an output root whose champion.json names one.")]
DataOpt = Annotated[str, typer.Option("--data", envvar="FT_DATA", help="A file or a folder/prefix of files (CSV, TSV, JSON Lines/JSON, Parquet, Arrow).")]
TextOpt = Annotated[str, typer.Option(envvar="FT_TEXT_COLUMN", help="Text column (0-based position with --no-header).")]
PairOpt = Annotated[Optional[str], typer.Option(envvar="FT_TEXT_PAIR_COLUMN", help="Second text column, for sentence pairs.")]
HeaderOpt = Annotated[bool, typer.Option(envvar="FT_HEADER", help="CSV/TSV files start with a header row.")]
FormatOpt = Annotated[str, typer.Option("--format", envvar="FT_FORMAT", help="auto, csv, tsv, jsonl, json, parquet or arrow.")]
BatchOpt = Annotated[int, typer.Option(envvar="FT_BATCH_SIZE", help="Rows per prediction batch.")]
LengthOpt = Annotated[Optional[int], typer.Option(envvar="FT_MAX_LENGTH", help="Truncate texts to this many tokens (default: the run's training max length).")]
EncodingOpt = Annotated[str, typer.Option(envvar="FT_ENCODING", help="Text file encoding: auto (UTF-8, BOM optional; UTF-16 with BOM) or a codec name.")]
QuotingOpt = Annotated[str, typer.Option(envvar="FT_QUOTING", help="CSV/TSV quoting: auto, csv or none.")]
DelimiterOpt = Annotated[str, typer.Option(envvar="FT_DELIMITER", help="CSV/TSV delimiter: auto, ',', ';', '|' or tab.")]
JsonFieldOpt = Annotated[Optional[str], typer.Option(envvar="FT_JSON_FIELD", help="JSON document: the key holding the array of rows.")]


@app.command()
def predict(
    model: RunOpt = "",
    data: DataOpt = "",
    output: Annotated[str, typer.Option(envvar="FT_PREDICTIONS", help="Predictions file (.jsonl or .csv), local or gs://.")] = "",
    text_column: TextOpt = "text", text_pair_column: PairOpt = None, header: HeaderOpt = True,
    data_format: FormatOpt = "auto", batch_size: BatchOpt = 64, max_length: LengthOpt = None,
    encoding: EncodingOpt = "auto", quoting: QuotingOpt = "auto", delimiter: DelimiterOpt = "auto",
    json_field: JsonFieldOpt = None,
) -> None:
    """Predict a label and class probabilities for every row of DATA with a trained run."""

    def go() -> None:
        from job.predict import predict_command

        cfg = _score_config(model, data, output, True, text_column, text_pair_column, "label", header, data_format,
                            batch_size, max_length, dict(encoding=encoding, quoting=quoting, delimiter=delimiter,
                                                         json_field=json_field))
        with tempfile.TemporaryDirectory() as tmp:
            result = predict_command(cfg, Path(tmp))
        typer.echo(json.dumps(result))

    _exit_with(go)


@app.command()
def evaluate(
    model: RunOpt = "",
    data: DataOpt = "",
    output: Annotated[str, typer.Option(envvar="FT_EVALUATION", help="Also write the metrics JSON here (local or gs://).")] = "",
    text_column: TextOpt = "text", text_pair_column: PairOpt = None,
    label_column: Annotated[str, typer.Option(envvar="FT_LABEL_COLUMN", help="Label column (class names of the model).")] = "label",
    header: HeaderOpt = True, data_format: FormatOpt = "auto", batch_size: BatchOpt = 64, max_length: LengthOpt = None,
    encoding: EncodingOpt = "auto", quoting: QuotingOpt = "auto", delimiter: DelimiterOpt = "auto",
    json_field: JsonFieldOpt = None,
    label_separator: Annotated[Optional[str], typer.Option(envvar="FT_LABEL_SEPARATOR", help="Multi-label models: labels as one delimited string, e.g. '|'.")] = None,
) -> None:
    """Score a trained run on a labelled file: the same metrics as training's evaluation."""

    def go() -> None:
        from job.predict import evaluate_command

        cfg = _score_config(model, data, output, False, text_column, text_pair_column, label_column, header,
                            data_format, batch_size, max_length, dict(encoding=encoding, quoting=quoting,
                                                                      delimiter=delimiter, json_field=json_field),
                            label_separator)
        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate_command(cfg, Path(tmp))
        typer.echo(json.dumps(result["evaluation"], indent=2))

    _exit_with(go)


@app.command()
def version() -> None:
    """Print the versions of the job's main packages."""
    from job.report import package_versions

    for name, v in package_versions().items():
        typer.echo(f"{name} {v}")


def _exit_with(step) -> None:
    """Run `step`; turn every failure into one line on stderr and the exit code of its kind."""
    from job.logs import redact

    from job.errors import Interrupted

    try:
        step()
    except (JobError, Interrupted) as exc:
        log.error("%s", exc)
        typer.echo(f"error: {redact(str(exc))}", err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(int(ExitCode.RETRY)) from None
    except OSError as exc:
        from job.errors import from_os_error

        typed = from_os_error(exc)
        if typed is None:
            log.exception("internal error")
            typer.echo(f"error: internal error ({type(exc).__name__}: {redact(str(exc))}); please report it", err=True)
            raise typer.Exit(int(ExitCode.INTERNAL)) from None
        log.error("%s", typed)
        typer.echo(f"error: {redact(str(typed))}", err=True)
        raise typer.Exit(int(typed.exit_code)) from None
    except Exception as exc:  # a bug: keep the traceback in the log, but still one clear last line
        log.exception("internal error")
        typer.echo(f"error: internal error ({type(exc).__name__}: {redact(str(exc))}); please report it", err=True)
        raise typer.Exit(int(ExitCode.INTERNAL)) from None


# ---- Hyper-parameter sweeps (job/sweep.py; k8s/overlays/sweep) ----------------------------------

_SWEEP_HELP = "Hyper-parameter sweep as JSON: {\"grid\": {...}} or {\"random\": {...}} (see job/sweep.py)."


def _sweep_from(sweep_json: str, output_root: str, run_id: str):
    from job import sweep as sweep_step
    from job.errors import ConfigError

    if not sweep_json:
        raise ConfigError("no sweep given: set FT_SWEEP (or --sweep)")
    if not output_root:
        raise ConfigError("a sweep needs FT_OUTPUT_ROOT (or --output-root): trials publish to ROOT/runs/<sweep>-<i>")
    return sweep_step.parse(sweep_json, run_id)


@app.command("sweep-trial")
def sweep_trial(
    sweep_json: Annotated[str, _opt("FT_SWEEP", _SWEEP_HELP, TRAIN, "--sweep")] = "",
    index: Annotated[Optional[int], typer.Option("--index", envvar="JOB_COMPLETION_INDEX", help="The trial to run (an Indexed Job sets JOB_COMPLETION_INDEX).")] = None,
    output_root: Annotated[str, _opt("FT_OUTPUT_ROOT", "Trial i publishes to ROOT/runs/<sweep>-<i>; the summary goes to ROOT/sweeps/<sweep>.json.", OUT)] = "",
    run_id: Annotated[str, _opt("FT_RUN_ID", "The sweep's name when FT_SWEEP has none (the Job's name).", OUT)] = "",
    promote_if_better: Annotated[str, _opt("FT_PROMOTE_IF_BETTER", "Promote the sweep's best trial if better than the champion (METRIC[:MIN_DELTA]).", OUT)] = "",
    force_promotion: Annotated[bool, _opt("FT_FORCE_PROMOTION", "Promote even if the validation data differ from the champion's.", OUT)] = False,
) -> None:
    """Train trial JOB_COMPLETION_INDEX of FT_SWEEP with `train` and the other FT_* settings; the last trial to finish writes the summary and promotes the best."""
    import signal
    import subprocess

    from job import sweep as sweep_step

    prepared = {}

    def prepare() -> None:
        from job.errors import ConfigError

        sweep = _sweep_from(sweep_json, output_root, run_id)
        if index is None:
            raise ConfigError("no trial index: sweep-trial runs in an Indexed Job (JOB_COMPLETION_INDEX) or with --index")
        env = {**os.environ, **sweep_step.trial_env(sweep, index), "FT_OUTPUT_ROOT": output_root}
        for name in ("FT_PROMOTE_IF_BETTER", "FT_FORCE_PROMOTION", "FT_OUTPUT", "FT_SWEEP"):
            env.pop(name, None)  # a trial never promotes itself: the summary promotes the best
        prepared.update(sweep=sweep, env=env)

    _exit_with(prepare)
    log.info("sweep %s: trial %d of %d: %s", prepared["sweep"].name, index, len(prepared["sweep"].trials),
             prepared["sweep"].trials[index])
    # `train` in a process of its own, exactly as the container runs it; SIGTERM is passed on so it
    # checkpoints and exits 75 (preemption) like any run.
    child = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "train"], env=prepared["env"])
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        raise typer.Exit(code if code > 0 else 128 - code)
    _exit_with(lambda: sweep_step.summarize(output_root, prepared["sweep"], promote_if_better, force_promotion))


@app.command("sweep-summary")
def sweep_summary(
    sweep_json: Annotated[str, _opt("FT_SWEEP", _SWEEP_HELP, TRAIN, "--sweep")] = "",
    output_root: Annotated[str, _opt("FT_OUTPUT_ROOT", "The sweep's output root.", OUT)] = "",
    run_id: Annotated[str, _opt("FT_RUN_ID", "The sweep's name when FT_SWEEP has none.", OUT)] = "",
    promote_if_better: Annotated[str, _opt("FT_PROMOTE_IF_BETTER", "Promote the best trial if better (METRIC[:MIN_DELTA]).", OUT)] = "",
    force_promotion: Annotated[bool, _opt("FT_FORCE_PROMOTION", "Promote even if the validation data differ.", OUT)] = False,
) -> None:
    """Write ROOT/sweeps/<sweep>.json from the published trials and promote the best (again: idempotent)."""

    def go() -> None:
        from job import sweep as sweep_step
        from job.errors import TransientError

        sweep = _sweep_from(sweep_json, output_root, run_id)
        if sweep_step.summarize(output_root, sweep, promote_if_better, force_promotion) is None:
            raise TransientError(f"not every trial of sweep {sweep.name} has published yet; run again when they have")

    _exit_with(go)


if __name__ == "__main__":
    try:
        app()
    except SystemExit as done:
        if done.code not in (0, None):
            # A failed run ends with its `error:` line: skip the interpreter's teardown, where
            # TensorFlow and its threads would print warnings after it.
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            logging.shutdown()
            os._exit(done.code if isinstance(done.code, int) else 1)
        raise

"""The job's configuration: one frozen object, built once from the command line, validated here.

Layered by concern (data / model / training / output) like the Model Garden's task/trainer/runtime
split. Every default lives in this file with the reason for it; entrypoint.py only maps flags and
environment variables onto these fields.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import secrets
from typing import Any

from job.errors import ConfigError

DATA_FORMATS = ("auto", "csv", "tsv", "jsonl", "json", "parquet", "arrow")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
JIT_COMPILE = ("auto", "on", "off")
# "lazy" (training.LazyRowsAdamW) is not offered yet: its runs trained but failed to export the SavedModel.
EMBEDDING_UPDATES = ("dense", "frozen")
# Promotion metrics and their direction: +1 higher is better, -1 lower is better.
PROMOTION_METRICS = {"accuracy": +1, "macro_f1": +1, "loss": -1, "micro_f1": +1, "pearson": +1, "spearman": +1,
                     "mse": -1}
# --problem-type: auto is multi_label when the label column holds lists (or --label-separator is
# given), else single_label; regression is never guessed (integer scores would look like classes).
PROBLEM_TYPES = ("auto", "single_label", "multi_label", "regression")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # A folder or prefix holding train.* and validation.*/dev.* (files or folders of shards).
    data: str | None = None
    # Explicit split locations; each overrides what --data would find.
    train: str | None = None
    validation: str | None = None
    # Column names, or 0-based positions when header=False.
    text_column: str = "text"
    text_pair_column: str | None = None  # second text for sentence-pair tasks (NLI, paraphrase)
    label_column: str = "label"
    header: bool = True
    data_format: str = "auto"  # auto: from the file extension (.csv .tsv .jsonl/.json .parquet)
    # Carved from train with `seed` when no validation split exists: 10% is the usual hold-out.
    validation_fraction: float = 0.1
    # Cap on training rows (after shuffling with `seed`): quick experiments, demos, benchmarks.
    max_train_examples: int | None = None
    # Text files: auto is UTF-8 with or without a byte-order mark, UTF-16 when a BOM says so.
    encoding: str = "auto"
    # auto: RFC 4180 quoting when the file reads consistently with it (pandas, the csv module),
    # quotes as plain text otherwise (GLUE TSVs); csv or none force one reading.
    quoting: str = "auto"
    # auto: sniffed for CSV from the header and the named columns, a tab for TSV; or , ; | tab.
    delimiter: str = "auto"
    # JSON documents: the top-level key holding the array of rows ({"data": [...]}).
    json_field: str | None = None
    # Fail (exit 3) when more than this share of validation rows also occur in train; None: report only.
    max_leakage: float | None = None
    # auto | single_label | multi_label | regression (job/problem.py, job/labels.py).
    problem_type: str = "auto"
    # Multi-label labels written as one delimited string ("sports|news"); lists need none.
    label_separator: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # Hub id, local directory or gs:// directory of a pretrained checkpoint.
    model: str = ""
    # Inferred from the training labels unless given (then labels must be ids below it).
    num_labels: int | None = None
    # Truncation length in tokens; 128 covers most sentence-level classification data. "auto": the
    # smallest multiple of 8 covering 99% of training rows, capped at the model's limit.
    max_length: int | str = 128


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    # Per device; the global batch is this times the number of replicas.
    per_replica_batch_size: int = 32
    # Peak learning rate after warm-up; 2e-5..1e-4 is the usual range for BERT-sized models.
    learning_rate: float = 5e-5
    # Fraction of all steps spent warming up linearly from 0 before the linear decay to 0.
    warmup_ratio: float = 0.1
    # Decoupled (AdamW) weight decay; not applied to biases and LayerNorm weights.
    weight_decay: float = 0.01
    seed: int = 42
    # Save training state every this many optimizer steps (and after every epoch); 0: epochs only.
    # A save costs one upload of model + optimizer state (3x the model size): keep it minutes apart.
    checkpoint_every: int = 500
    # Multi-worker: seconds to wait for peers at start and inside one collective before failing.
    cluster_timeout: int = 600
    # auto | fp32 | bf16 | fp16. auto: bf16 on GPUs with compute capability 8.0+, fp16 with loss
    # scaling on 7.x; on CPU bf16 with native bf16 (AVX512-BF16/AMX), else fp32. Mixed precision keeps the head, logits and loss in float32.
    precision: str = "auto"
    # XLA-compile the train step: auto (on with GPUs, off on CPU: no faster there, and slow to
    # compile), on, off. Batches are then padded to multiples of 16 tokens: a handful of programs.
    jit_compile: str = "auto"
    # Optimizer steps per call into the compiled step: >1 saves host round trips on fast GPUs;
    # callbacks (progress, NaN check, checkpoints) then run every this many steps.
    steps_per_execution: int = 1
    # How the input embedding tables learn: dense (AdamW on every row, every step) or frozen (kept
    # as pretrained).
    embedding_updates: str = "dense"
    # The epoch whose weights are published: best validation METRIC (loss, accuracy, macro_f1,
    # micro_f1, pearson, spearman, mse), or "last". Empty: the promotion metric when given, else loss.
    select_best: str = ""
    # Stop after this many epochs without an improvement of at least min_delta; 0: never.
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    # none | balanced | a JSON object {label: weight}. Single-label: per-class loss weights;
    # multi-label: per-label positive weights (balanced: negatives / positives of each label).
    class_weight: str = "none"
    # Multi-label decision threshold on each label's probability, or per-label thresholds chosen on
    # validation (best F1 per label); stored with the model and used by serving, predict, evaluate.
    threshold: float = 0.5
    tune_thresholds: bool = False


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    # Where the finished run is published (local folder or gs:// prefix). Empty with output_root:
    # `<output_root>/runs/<run_id>`.
    output: str = ""
    # Scheduled retraining: every run under `<output_root>/runs/`, the champion pointer at
    # `<output_root>/champion.json`, promotion decisions under `<output_root>/promotions/`.
    output_root: str = ""
    # The run's name; from the start time and a random suffix when empty. Kubernetes passes the
    # Job's name so that a retried pod continues (and publishes) the same run.
    run_id: str = ""
    # METRIC[:MIN_DELTA] (accuracy, macro_f1, loss; micro_f1 multi-label; pearson, spearman, mse
    # regression): after publishing, make this run the champion
    # only if it beats the current one by MIN_DELTA on the same validation data.
    promote_if_better: str = ""
    # Promote even across different validation data (or when champion.json is unreadable).
    force_promotion: bool = False
    # Extra places for copies of the run's TensorBoard events and report (platform conventions).
    tensorboard_dir: str = ""
    report_dir: str = ""
    # Replace a completed run already at `output` instead of refusing.
    overwrite: bool = False
    # Local scratch for downloads, staging and caches; a temp folder when empty.
    work_dir: str = ""
    # Where training state is saved for resuming (local or gs://); empty: inside the output's own
    # bookkeeping folder, `<output>/.finetune-job/checkpoints` - writable wherever the output is (a
    # mount point with a read-only parent, a bucket root), and cleared once the run is published.
    checkpoint_dir: str = ""

    @property
    def checkpoints(self) -> str:
        from job.publish import CHECKPOINTS

        return self.checkpoint_dir or self.output.rstrip("/") + "/" + CHECKPOINTS


@dataclasses.dataclass(frozen=True)
class JobConfig:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    output: OutputConfig

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_output(output: str, output_root: str, run_id: str) -> tuple[str, str]:
    """(output, run_id): an explicit --output wins; else `<root>/runs/<run_id>`, naming the run
    from the clock and a random suffix when no id is given."""
    if not run_id:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        run_id = f"{stamp}-{secrets.token_hex(3)}"
    if output or not output_root:
        return output, run_id
    return output_root.rstrip("/") + "/runs/" + run_id, run_id


def _positive(name: str, value: float | int | None) -> None:
    if value is not None and (not math.isfinite(value) or value <= 0):
        raise ConfigError(f"--{name} must be greater than 0, got {value}")


def validate(cfg: JobConfig) -> None:
    """Reject settings that cannot work, before any data or model is touched."""
    d, m, t, o = cfg.data, cfg.model, cfg.train, cfg.output
    if not (d.data or d.train):
        raise ConfigError("no training data: pass --data (a folder with train.*) or --train (a file or folder)")
    if not m.model:
        raise ConfigError("no model: pass --model (a hub id, a local directory or a gs:// directory)")
    if not o.output:
        raise ConfigError("no output: pass --output (a local folder or a gs:// prefix) or --output-root")
    if o.promote_if_better and not o.output_root:
        raise ConfigError("--promote-if-better needs --output-root, where champion.json lives")
    if o.promote_if_better:
        parse_promote_spec(o.promote_if_better)
    if o.run_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", o.run_id):
        raise ConfigError(f"--run-id {o.run_id!r} must be letters, digits, '.', '_' or '-' (at most 128)")
    if d.data_format not in DATA_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(DATA_FORMATS)}, got {d.data_format!r}")
    if not 0 < d.validation_fraction < 1:
        raise ConfigError(f"--validation-fraction must be between 0 and 1 (exclusive), got {d.validation_fraction}")
    _positive("max-train-examples", d.max_train_examples)
    if m.max_length != "auto":
        if isinstance(m.max_length, str) or isinstance(m.max_length, bool):
            raise ConfigError(f"--max-length must be a number of tokens or auto, got {m.max_length!r}")
        _positive("max-length", m.max_length)
    from job.formats import check_options

    check_options(d.encoding, d.quoting, d.delimiter)
    if d.max_leakage is not None and not (math.isfinite(d.max_leakage) and 0 <= d.max_leakage <= 1):
        raise ConfigError(f"--max-leakage must be a share from 0 to 1, got {d.max_leakage}")
    _positive("epochs", t.epochs)
    _positive("per-replica-batch-size", t.per_replica_batch_size)
    _positive("learning-rate", t.learning_rate)
    _positive("cluster-timeout", t.cluster_timeout)
    _positive("steps-per-execution", t.steps_per_execution)
    if t.precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    if t.embedding_updates not in EMBEDDING_UPDATES:
        raise ConfigError(f"--embedding-updates must be one of {', '.join(EMBEDDING_UPDATES)}, got {t.embedding_updates!r}")
    if t.jit_compile not in JIT_COMPILE:
        raise ConfigError(f"--jit-compile must be one of {', '.join(JIT_COMPILE)}, got {t.jit_compile!r}")
    if isinstance(t.seed, bool) or not isinstance(t.seed, int) or not 0 <= t.seed < 2**32:
        raise ConfigError(f"--seed must be a whole number from 0 to {2**32 - 1}, got {t.seed}")
    if t.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be 0 (epochs only) or more, got {t.checkpoint_every}")
    if m.num_labels is not None and m.num_labels < 2:
        raise ConfigError(f"--num-labels must be at least 2 for classification, got {m.num_labels}")
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {t.warmup_ratio}")
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
        raise ConfigError(f"--weight-decay must be 0 or more, got {t.weight_decay}")
    if not d.header:
        for flag, col in (("text-column", d.text_column), ("label-column", d.label_column),
                          ("text-pair-column", d.text_pair_column)):
            if col is not None and not col.isdigit():
                raise ConfigError(f"with --no-header, --{flag} must be a 0-based column position, got {col!r}")
    if d.problem_type not in PROBLEM_TYPES:
        raise ConfigError(f"--problem-type must be one of {', '.join(PROBLEM_TYPES)}, got {d.problem_type!r}")
    if d.label_separator is not None and (d.label_separator == "" or d.label_separator.strip() != d.label_separator):
        raise ConfigError(f"--label-separator must be a non-blank string without surrounding spaces, got "
                          f"{d.label_separator!r}")
    if d.label_separator is not None and d.problem_type in ("single_label", "regression"):
        raise ConfigError(f"--label-separator splits multi-label labels; it does not apply to --problem-type "
                          f"{d.problem_type}: drop it or use --problem-type multi_label")
    if not (math.isfinite(t.threshold) and 0 < t.threshold < 1):
        raise ConfigError(f"--threshold must be between 0 and 1 (exclusive), got {t.threshold}")
    if t.early_stopping_patience < 0:
        raise ConfigError(f"--early-stopping-patience must be 0 (off) or more, got {t.early_stopping_patience}")
    if not (math.isfinite(t.early_stopping_min_delta) and t.early_stopping_min_delta >= 0):
        raise ConfigError(f"--early-stopping-min-delta must be 0 or more, got {t.early_stopping_min_delta}")
    from job import problem  # the problem type's rules live there; imported late: it imports TF lazily

    problem.check_settings(cfg)
    _check_places(cfg)


def _location(uri: str) -> tuple[str, ...]:
    """A comparable form of a place: ("gs", bucket, *parts) or ("file", *parts of the real path)."""
    if uri.startswith("gs://"):
        bucket, _, name = uri[len("gs://"):].partition("/")
        return ("gs", bucket, *[p for p in name.split("/") if p])
    real = os.path.realpath(os.path.expanduser(uri))
    return ("file", *[p for p in real.split(os.sep) if p])


def overlaps(a: str, b: str) -> bool:
    """Whether one place lies inside the other (or they are the same place)."""
    x, y = _location(a), _location(b)
    n = min(len(x), len(y))
    return x[:n] == y[:n]


def _check_places(cfg: JobConfig) -> None:
    """Places that must not overlap, checked before anything is read: writing the run into the data
    would feed it back as data next time, and reading data from the output would let --overwrite or
    a cleanup delete it; checkpoints, scratch or copies inside the output would become files of no
    manifest there (and block every retry)."""
    d, o = cfg.data, cfg.output
    out = o.output
    for flag, src in (("data", d.data), ("train", d.train), ("validation", d.validation)):
        if src and overlaps(out, src):
            inside = "lies inside" if len(_location(out)) >= len(_location(src)) else "contains"
            raise ConfigError(f"--output {out} {inside} --{flag} {src}: keep the output and the input apart")
    for flag, place in (("checkpoint-dir", o.checkpoint_dir), ("work-dir", o.work_dir),
                        ("tensorboard-dir", o.tensorboard_dir), ("report-dir", o.report_dir)):
        if place and overlaps(out, place):
            raise ConfigError(f"--{flag} {place} overlaps --output {out}: choose a place outside the output "
                              f"(or leave --{flag} unset for the default)")
    if o.work_dir and o.work_dir.startswith("gs://"):
        raise ConfigError(f"--work-dir must be a local folder, got {o.work_dir}")
    root, run = _location(o.output_root), _location(out)
    if o.promote_if_better and not (len(run) > len(root) and run[:len(root)] == root):
        raise ConfigError(f"--output {out} must lie below --output-root {o.output_root} to be promoted "
                          "(leave --output unset: the run then goes to ROOT/runs/RUN_ID)")


def parse_promote_spec(spec: str) -> tuple[str, float]:
    """"accuracy:0.005" -> ("accuracy", 0.005); "loss" -> ("loss", 0.0). "macro-f1" is macro_f1."""
    name, sep, delta_text = str(spec).strip().partition(":")
    metric = name.strip().lower().replace("-", "_")
    if metric not in PROMOTION_METRICS:
        raise ConfigError(f"promotion metric must be one of {', '.join(PROMOTION_METRICS)} (as METRIC or "
                          f"METRIC:MIN_DELTA, e.g. accuracy:0.005), got {spec!r}")
    if not sep:
        return metric, 0.0
    try:
        delta = float(delta_text)
    except ValueError:
        raise ConfigError(f"promotion spec {spec!r}: {delta_text!r} is not a number; "
                          f"write e.g. {metric}:0.005") from None
    if not math.isfinite(delta) or delta < 0:
        raise ConfigError(f"promotion spec {spec!r}: the minimum improvement must be 0 or more, got {delta_text}")
    return metric, delta


# --------------------------------------------------------------------------------------------
# Built from the command line: flag > FT_* variable > platform convention > default

#: Options a platform (Vertex AI, SageMaker) may supply when the user left them at their default.
PLATFORM_OPTIONS = ("output", "train", "validation", "checkpoint_dir", "tensorboard_dir", "report_dir")


def from_cli(params: dict[str, Any], given: set[str], environ) -> JobConfig:
    """The JobConfig of `train`'s parsed options (`params`, by option name), `given` naming the ones
    the user set (flag or FT_* variable). Platform conventions fill only options left at default."""
    from job import platform

    params = dict(params)
    defaults = platform.platform_defaults(environ)
    if defaults:
        import logging

        logging.getLogger(__name__).info("%s", platform.describe(environ))
    params.update(platform.apply_defaults({k: params[k] for k in PLATFORM_OPTIONS}, given, defaults))
    length = str(params.get("max_length", ModelConfig.max_length)).strip().lower()
    if length != "auto":
        try:
            length = int(length)
        except ValueError:
            raise ConfigError(f"--max-length must be a number of tokens or auto, got {params['max_length']!r}") from None
    params["max_length"] = length
    params["output"], params["run_id"] = resolve_output(params["output"], params["output_root"], params["run_id"])

    def pick(cls):
        return cls(**{f.name: params[f.name] for f in dataclasses.fields(cls)})

    return JobConfig(data=pick(DataConfig), model=pick(ModelConfig), train=pick(TrainConfig), output=pick(OutputConfig))


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """predict and evaluate: a published run (or an output root with a champion), rows, a destination."""

    model: str
    data: str
    output: str | None
    rows: DataConfig
    batch_size: int = 64
    # None: the run's own training max_length (its metrics.json), 128 for a run that does not say.
    max_length: int | None = None
    needs_output: bool = False  # predict writes a file; evaluate's file is optional

    def __post_init__(self) -> None:
        what = "predict" if self.needs_output else "evaluate"
        if not (self.model and self.data and (self.output or not self.needs_output)):
            raise ConfigError(f"{what} needs --model, --data" + (" and --output" if self.needs_output else ""))
        if self.rows.data_format not in DATA_FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(DATA_FORMATS)}, got {self.rows.data_format!r}")
        _positive("batch-size", self.batch_size)
        _positive("max-length", self.max_length)

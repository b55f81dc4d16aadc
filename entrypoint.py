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

import logging
import sys
from typing import Annotated, Optional

import typer

from job.config import DataConfig, JobConfig, ModelConfig, OutputConfig, TrainConfig
from job.errors import ExitCode, JobError

# Plain (not rich) help and errors: pod logs get one readable line, not a box of box-drawing characters.
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None,
                  help="Fine-tune a pretrained Hugging Face transformer for text classification.")
log = logging.getLogger("finetune-job")

DATA, MODEL, TRAIN, OUT = "Data", "Model", "Training", "Output"


def _opt(envvar: str, help: str, panel: str, *names: str):
    return typer.Option(*names, envvar=envvar, help=help, rich_help_panel=panel)


@app.command()
def train(
    model: Annotated[str, _opt("FT_MODEL", "Pretrained checkpoint: hub id, local folder or gs:// folder.", MODEL)] = "",
    output: Annotated[str, _opt("FT_OUTPUT", "Where the finished run is published: local folder or gs:// prefix.", OUT)] = "",
    data: Annotated[Optional[str], _opt("FT_DATA", "Folder/prefix holding train.* and validation.* or dev.* (files or folders of shards).", DATA)] = None,
    train: Annotated[Optional[str], _opt("FT_TRAIN", "Training file or folder of shards (overrides --data).", DATA)] = None,
    validation: Annotated[Optional[str], _opt("FT_VALIDATION", "Validation file or folder (overrides --data); carved from train when absent.", DATA)] = None,
    text_column: Annotated[str, _opt("FT_TEXT_COLUMN", "Text column name (0-based position with --no-header).", DATA)] = DataConfig.text_column,
    text_pair_column: Annotated[Optional[str], _opt("FT_TEXT_PAIR_COLUMN", "Optional second text column, for sentence pairs.", DATA)] = None,
    label_column: Annotated[str, _opt("FT_LABEL_COLUMN", "Label column: integer ids or names.", DATA)] = DataConfig.label_column,
    header: Annotated[bool, _opt("FT_HEADER", "CSV/TSV files start with a header row; with --no-header, columns are positions.", DATA)] = True,
    data_format: Annotated[str, _opt("FT_FORMAT", "auto (from the file name), csv, tsv, jsonl or parquet.", DATA, "--format")] = DataConfig.data_format,
    validation_fraction: Annotated[float, _opt("FT_VALIDATION_FRACTION", "Share of train held out when no validation split exists.", DATA)] = DataConfig.validation_fraction,
    max_train_examples: Annotated[Optional[int], _opt("FT_MAX_TRAIN_EXAMPLES", "Train on a random subset of this many rows.", DATA)] = None,
    num_labels: Annotated[Optional[int], _opt("FT_NUM_LABELS", "Number of classes; inferred from the training labels when absent.", MODEL)] = None,
    max_length: Annotated[int, _opt("FT_MAX_LENGTH", "Truncate texts to this many tokens.", MODEL)] = ModelConfig.max_length,
    epochs: Annotated[int, _opt("FT_EPOCHS", "Passes over the training data.", TRAIN)] = TrainConfig.epochs,
    per_replica_batch_size: Annotated[int, _opt("FT_PER_REPLICA_BATCH_SIZE", "Batch size per device; global batch = this x replicas.", TRAIN)] = TrainConfig.per_replica_batch_size,
    learning_rate: Annotated[float, _opt("FT_LEARNING_RATE", "Peak learning rate, reached after warm-up.", TRAIN)] = TrainConfig.learning_rate,
    warmup_ratio: Annotated[float, _opt("FT_WARMUP_RATIO", "Share of steps with linear warm-up before linear decay to 0.", TRAIN)] = TrainConfig.warmup_ratio,
    weight_decay: Annotated[float, _opt("FT_WEIGHT_DECAY", "AdamW decoupled weight decay (not on biases/LayerNorm).", TRAIN)] = TrainConfig.weight_decay,
    seed: Annotated[int, _opt("FT_SEED", "Seed for shuffling, the validation carve and initialisation.", TRAIN)] = TrainConfig.seed,
    checkpoint_every: Annotated[int, _opt("FT_CHECKPOINT_EVERY", "Save training state every N steps (and each epoch); 0: epochs only.", TRAIN)] = TrainConfig.checkpoint_every,
    cluster_timeout: Annotated[int, _opt("FT_CLUSTER_TIMEOUT", "Multi-worker: seconds to wait for peers before failing.", TRAIN)] = TrainConfig.cluster_timeout,
    checkpoint_dir: Annotated[str, _opt("FT_CHECKPOINT_DIR", "Where training state is kept for resuming (default: OUTPUT.checkpoints).", OUT)] = "",
    overwrite: Annotated[bool, _opt("FT_OVERWRITE", "Replace a completed run already at --output.", OUT)] = False,
    work_dir: Annotated[str, _opt("FT_WORK_DIR", "Local scratch for downloads and staging (default: a temp folder).", OUT)] = "",
) -> None:
    """Fine-tune MODEL on labelled text and publish the model, SavedModel and metrics to OUTPUT."""
    _setup_logging()

    def build() -> JobConfig:
        return JobConfig(
            data=DataConfig(data=data, train=train, validation=validation, text_column=text_column,
                            text_pair_column=text_pair_column, label_column=label_column, header=header,
                            data_format=data_format, validation_fraction=validation_fraction,
                            max_train_examples=max_train_examples),
            model=ModelConfig(model=model, num_labels=num_labels, max_length=max_length),
            train=TrainConfig(epochs=epochs, per_replica_batch_size=per_replica_batch_size,
                              learning_rate=learning_rate, warmup_ratio=warmup_ratio,
                              weight_decay=weight_decay, seed=seed, checkpoint_every=checkpoint_every,
                              cluster_timeout=cluster_timeout),
            output=OutputConfig(output=output, overwrite=overwrite, work_dir=work_dir,
                                checkpoint_dir=checkpoint_dir),
        )

    def go() -> None:
        from job.run import run

        run(build())

    _exit_with(go)


@app.command()
def version() -> None:
    """Print the versions of the job's main packages."""
    from job.report import package_versions

    for name, v in package_versions().items():
        typer.echo(f"{name} {v}")


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("FT_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("absl", "h5py", "urllib3", "google", "datasets", "transformers.modeling_tf_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _exit_with(step) -> None:
    """Run `step`; turn every failure into one line on stderr and the exit code of its kind."""
    try:
        step()
    except JobError as exc:
        log.error("%s", exc)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        raise typer.Exit(int(ExitCode.RETRY)) from None
    except Exception as exc:  # a bug: keep the traceback in the log, but still one clear last line
        log.exception("internal error")
        typer.echo(f"error: internal error ({type(exc).__name__}: {exc}); please report it", err=True)
        raise typer.Exit(int(ExitCode.INTERNAL)) from None


if __name__ == "__main__":
    app()

"""Defaults from the managed training platform the job runs on: Vertex AI custom jobs, SageMaker.

    from job import platform
    defaults = platform.platform_defaults(os.environ)
    options = platform.apply_defaults(options, user_set, defaults)

Precedence, highest first:

    1. a command-line flag
    2. its FT_* environment variable
    3. the platform's variable (this module)
    4. the built-in default (job/config.py)

so a platform never overrides what the user asked for. The caller applies these values only to
options whose click ParameterSource is DEFAULT (neither flag nor FT_* variable was given):
`user_set = {name for name in options if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}`.

Keys are the `train` command's parameter names:

    Vertex AI (custom training; AIP_* are set when base_output_directory / a TensorBoard is given)
        AIP_MODEL_DIR           -> output            gs://.../model/
        AIP_CHECKPOINT_DIR      -> checkpoint_dir    gs://.../checkpoints/
        AIP_TENSORBOARD_LOG_DIR -> tensorboard_dir   gs://.../logs/
    SageMaker (training jobs; local folders that SageMaker syncs with S3)
        SM_MODEL_DIR            -> output            /opt/ml/model (tarred to S3 after the job)
        SM_CHANNEL_TRAIN        -> train             /opt/ml/input/data/train
        SM_CHANNEL_VALIDATION   -> validation        /opt/ml/input/data/validation
        SM_OUTPUT_DATA_DIR      -> report_dir        /opt/ml/output/data (plots, model card, predictions)

Not mapped, on purpose: Vertex's AIP_TRAINING_DATA_URI / AIP_VALIDATION_DATA_URI (managed datasets:
wildcard or BigQuery URIs the data reader does not take) and SageMaker's S3 locations (the job
reads only what SageMaker copied into the channels). On Vertex, point a Model's artifact_uri at
`$AIP_MODEL_DIR/saved_model` for the prebuilt TensorFlow serving containers: the run's SavedModel is
one folder below the output.
"""

from __future__ import annotations

from typing import Collection, Mapping

from job.errors import ConfigError

VERTEX = "vertex"
SAGEMAKER = "sagemaker"

# Platform -> environment variable -> option it supplies a default for.
MAPPINGS: dict[str, dict[str, str]] = {
    VERTEX: {
        "AIP_MODEL_DIR": "output",
        "AIP_CHECKPOINT_DIR": "checkpoint_dir",
        "AIP_TENSORBOARD_LOG_DIR": "tensorboard_dir",
    },
    SAGEMAKER: {
        "SM_MODEL_DIR": "output",
        "SM_CHANNEL_TRAIN": "train",
        "SM_CHANNEL_VALIDATION": "validation",
        "SM_OUTPUT_DATA_DIR": "report_dir",
    },
}


def detect_platform(env: Mapping[str, str]) -> str | None:
    """"vertex", "sagemaker" or None, from which of the mapped variables are set (non-empty)."""
    found = [name for name, mapping in MAPPINGS.items() if any((env.get(var) or "").strip() for var in mapping)]
    if len(found) > 1:
        # Guessing which one is real could write the model where nobody collects it.
        raise ConfigError("both Vertex AI (AIP_*) and SageMaker (SM_*) variables are set: unset the ones that do "
                          "not belong to this platform, or pass --output and the data options explicitly")
    return found[0] if found else None


def platform_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """Option name -> default from the platform's environment; {} when not on a known platform."""
    name = detect_platform(env)
    if name is None:
        return {}
    out = {}
    for var, option in MAPPINGS[name].items():
        value = (env.get(var) or "").strip()
        if value:
            out[option] = value
    return out


def apply_defaults(options: Mapping[str, object], user_set: Collection[str],
                   defaults: Mapping[str, str]) -> dict[str, object]:
    """`options` with `defaults` filled into every option the user did not set (flag or FT_* variable).

    Options the command does not have (yet) are skipped, not invented: returns only known keys.
    """
    return {k: (defaults[k] if k in defaults and k not in user_set else v) for k, v in options.items()}


def describe(env: Mapping[str, str]) -> str:
    """One log line: the platform and the values it supplies."""
    name = detect_platform(env)
    if name is None:
        return "platform: none detected (no AIP_* or SM_* variables)"
    values = ", ".join(f"{k}={v}" for k, v in platform_defaults(env).items())
    return f"platform: {name} ({values or 'no values'})"

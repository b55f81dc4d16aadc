"""job.platform: Vertex AI and SageMaker variables become option defaults; explicit settings win."""

from __future__ import annotations

import pytest

from job import platform
from job.errors import ConfigError

VERTEX_ENV = {"AIP_MODEL_DIR": "gs://b/job-1/model/", "AIP_CHECKPOINT_DIR": "gs://b/job-1/checkpoints/",
              "AIP_TENSORBOARD_LOG_DIR": "gs://b/job-1/logs/", "CLOUD_ML_JOB_ID": "123", "PATH": "/usr/bin"}
SAGEMAKER_ENV = {"SM_MODEL_DIR": "/opt/ml/model", "SM_CHANNEL_TRAIN": "/opt/ml/input/data/train",
                 "SM_CHANNEL_VALIDATION": "/opt/ml/input/data/validation", "SM_OUTPUT_DATA_DIR": "/opt/ml/output/data",
                 "SM_HOSTS": '["algo-1"]', "PATH": "/usr/bin"}


def test_vertex_ai():
    assert platform.detect_platform(VERTEX_ENV) == "vertex"
    assert platform.platform_defaults(VERTEX_ENV) == {
        "output": "gs://b/job-1/model/", "checkpoint_dir": "gs://b/job-1/checkpoints/",
        "tensorboard_dir": "gs://b/job-1/logs/"}


def test_sagemaker():
    assert platform.detect_platform(SAGEMAKER_ENV) == "sagemaker"
    assert platform.platform_defaults(SAGEMAKER_ENV) == {
        "output": "/opt/ml/model", "train": "/opt/ml/input/data/train",
        "validation": "/opt/ml/input/data/validation", "report_dir": "/opt/ml/output/data"}


def test_sagemaker_without_a_validation_channel_leaves_validation_unset():
    env = {k: v for k, v in SAGEMAKER_ENV.items() if k != "SM_CHANNEL_VALIDATION"}
    assert "validation" not in platform.platform_defaults(env)


def test_no_platform():
    env = {"PATH": "/usr/bin", "HOME": "/root", "FT_OUTPUT": "/tmp/out", "AIP_MODEL_DIR": "  "}
    assert platform.detect_platform(env) is None
    assert platform.platform_defaults(env) == {}
    assert platform.describe(env).startswith("platform: none")


def test_both_platforms_at_once_is_a_config_error():
    with pytest.raises(ConfigError, match="both Vertex AI"):
        platform.platform_defaults({**VERTEX_ENV, **SAGEMAKER_ENV})


def test_explicit_settings_win_over_platform_defaults():
    options = {"output": "gs://mine/run", "train": None, "validation": None, "data": "/opt/ml/input/data",
               "epochs": 3}
    merged = platform.apply_defaults(options, user_set={"output", "data"},
                                     defaults=platform.platform_defaults(SAGEMAKER_ENV))
    # output was given by the user; train/validation were not; report_dir is not an option here.
    assert merged == {"output": "gs://mine/run", "train": "/opt/ml/input/data/train",
                      "validation": "/opt/ml/input/data/validation", "data": "/opt/ml/input/data", "epochs": 3}
    assert platform.apply_defaults(options, set(), {}) == options


def test_the_stdlib_platform_module_is_not_shadowed():
    import importlib

    assert importlib.import_module("platform").python_version()

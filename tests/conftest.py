"""Shared fixtures: a tiny BERT "pretrained" checkpoint in TF and PyTorch-safetensors form, toy data,
and a real GCS emulator server (fake-gcs-server) on loopback."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

from demo import data as demo_data, emulator  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=128, type_vocab_size=2)


def build_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [w.lower() for w in demo_data.VOCABULARY_WORDS]
    words += list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = list(dict.fromkeys(words))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=128)
    return tok


def tf_to_pt_state_dict(model) -> dict[str, np.ndarray]:
    """The TF model's weights under PyTorch names and layouts (what a hub safetensors file holds)."""
    from transformers.modeling_tf_pytorch_utils import convert_tf_weight_name_to_pt_weight_name

    out = {}
    for w in model.weights:
        name, transpose = convert_tf_weight_name_to_pt_weight_name(
            w.name, start_prefix_to_remove="", tf_weight_shape=w.shape, name_scope=model.name)
        value = w.numpy()
        if transpose.name == "SIMPLE":
            value = value.T
        out[name] = np.ascontiguousarray(value)
    return out


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Keras' dtype policy is process-wide: a test that trains in bf16 (what --precision auto picks on
    CPUs with AMX) must not leave later tests' models computing in 16 bits."""
    yield
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        tf.keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """{'tf': folder with tf_model.h5, 'pt': folder with PyTorch-only model.safetensors}, same weights."""
    import tensorflow as tf
    from safetensors.numpy import save_file
    from transformers import BertConfig, TFBertModel

    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(root / "tok")
    config = BertConfig(vocab_size=len(tok.get_vocab()), **TINY)
    tf.keras.utils.set_random_seed(0)
    model = TFBertModel(config)
    model(model.dummy_inputs)
    tf_dir, pt_dir = root / "tf", root / "pt"
    model.save_pretrained(str(tf_dir))
    tok.save_pretrained(str(tf_dir))
    state = tf_to_pt_state_dict(model)
    pt_dir.mkdir()
    save_file(state, str(pt_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(pt_dir))
    tok.save_pretrained(str(pt_dir))
    return {"tf": tf_dir, "pt": pt_dir}


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """A learnable bag-of-words sentiment task: train.csv and validation.csv."""
    return demo_data.write_dataset(tmp_path_factory.mktemp("toy"), train=320, validation=96, seed=3,
                                   negation=False)


@pytest.fixture(scope="session")
def gcs_server():
    with emulator.Emulator() as server:
        yield server


@pytest.fixture
def gcs(gcs_server, monkeypatch):
    """STORAGE_EMULATOR_HOST set for this test; yields a client bound to the server."""
    from job import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.url)
    storage.gcs_client.cache_clear()
    yield emulator.client(gcs_server.url)
    storage.gcs_client.cache_clear()


def run_job(args: list[str], env: dict | None = None, timeout: int = 600, cwd: Path = ROOT,
            python: str = sys.executable) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (own TF runtime, real exit code)."""
    full_env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", **(env or {})}
    return subprocess.run([python, str(ROOT / "entrypoint.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


FAST = ["--epochs", "2", "--per-replica-batch-size", "16", "--max-length", "32", "--learning-rate", "3e-3",
        "--warmup-ratio", "0.1"]


# With FT_REQUIRE_TOOLS=1 or CI set (.ci/run sets both), a test skipped for a missing tool, data set
# or package index fails instead: a green CI run never hides a check that did not run. Locally a
# skip stays a skip, with its reason printed (`make test` runs pytest -rsx).
REQUIRE_TOOLS = (os.environ.get("FT_REQUIRE_TOOLS") == "1"
                 or os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_TOOLS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but FT_REQUIRE_TOOLS=1/CI requires every test to run: {reason}"


# The slowest files first (seconds under `make test`'s workers, from `pytest --durations=0`): with
# each worker taking one file at a time, a long file started last would leave the others idle.
# test_quality is one 4-minute test: first.
SLOWEST_FIRST = ["test_quality", "test_quality_problems", "test_publish", "test_multiworker", "test_resume", "test_job", "test_retraining",
                 "test_serving", "test_dockerfile", "test_logs", "test_problem_types", "test_storage", "test_sweep",
                 "test_bench", "test_preemption_budget"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))  # stable: file order kept

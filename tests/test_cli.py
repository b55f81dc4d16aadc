"""The command line: help, environment variables, and bad input -> one line, the right exit code,
nothing published."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

import entrypoint
from conftest import FAST, run_job
from job.errors import ExitCode

runner = CliRunner()


def invoke(args, env=None):
    result = runner.invoke(entrypoint.app, args, env=env)
    return result


def test_help_lists_commands_and_env_vars():
    top = invoke(["--help"])
    assert top.exit_code == 0 and "train" in top.output and "version" in top.output
    train = invoke(["train", "--help"])
    assert train.exit_code == 0
    for var in ("FT_DATA", "FT_MODEL", "FT_OUTPUT", "FT_LEARNING_RATE", "FT_PER_REPLICA_BATCH_SIZE",
                "FT_TEXT_PAIR_COLUMN", "FT_WARMUP_RATIO"):
        assert var in train.output


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.fixture
def good(tmp_path, tiny_checkpoints, toy_data):
    return {"data": str(toy_data), "model": str(tiny_checkpoints["tf"]), "out": str(tmp_path / "out")}


def cases(tmp_path, good, tiny_checkpoints):
    """(id, args replacing/adding to the good ones, message fragment, exit code)."""
    header_only = write(tmp_path / "h/train.csv", "text,label\n")
    no_label = write(tmp_path / "nl/train.csv", "text,target\nx,1\ny,0\n")
    outside = tmp_path / "outside"
    write(outside / "train.csv", "text,label\nx,pos\ny,neg\n")
    write(outside / "validation.csv", "text,label\nz,meh\n")
    no_weights = tmp_path / "noweights"
    write(no_weights / "config.json", '{"model_type": "bert"}')
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncaf\u00e9,1\nbad,0\n".encode("latin-1"))
    tabs = write(tmp_path / "tabs.csv", "sentence\tlabel\nx\t1\ny\t0\n")  # no 'text' under any delimiter
    blank = write(tmp_path / "blank.csv", "text,label\nx,1\n \t ,0\n")
    null_label = write(tmp_path / "nulllabel.csv", "text,label\nx,1\ny,\n")
    one_class = write(tmp_path / "oneclass.csv", "text,label\nx,1\ny,1\nz,1\n")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_checkpoints["pt"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    no_config = tmp_path / "noconfig"
    no_config.mkdir()
    signed = "https://storage.googleapis.com/b/train.csv?X-Goog-Signature=SECRET123abc&X-Goog-Credential=me"
    nul_text = write(tmp_path / "nul.csv", "text,label\nfine,0\nbad\x00byte,1\n")
    half_label = write(tmp_path / "half.csv", "text,label\nx,0\ny,0.5\nz,1\n")
    object_label = write(tmp_path / "object.jsonl", '{"text": "x", "label": 0}\n{"text": "y", "label": {"a": 1}}\n')
    return [
        ("missing data path", ["--data", str(tmp_path / "nope")], "does not exist", ExitCode.BAD_INPUT),
        ("missing text column", ["--text-column", "sentence"], "has no column 'sentence'", ExitCode.BAD_INPUT),
        ("missing label column", ["--train", no_label], "has no column 'label'", ExitCode.BAD_INPUT),
        ("empty split", ["--train", header_only], "header but no rows", ExitCode.BAD_INPUT),
        ("label outside classes", ["--data", str(outside)], "validation label 'meh' is not among", ExitCode.BAD_INPUT),
        ("not utf-8", ["--train", str(latin1)], "is not UTF-8 (invalid byte 0xe9 on line 2)", ExitCode.BAD_INPUT),
        ("wrong delimiter", ["--train", tabs], "try --format tsv", ExitCode.BAD_INPUT),
        ("whitespace-only text", ["--train", blank], "row 3: empty value in the text column", ExitCode.BAD_INPUT),
        ("null label", ["--train", null_label], "row 3: missing label", ExitCode.BAD_INPUT),
        ("single class", ["--train", one_class], "single class ('1')", ExitCode.BAD_INPUT),
        ("zero batch", ["--per-replica-batch-size", "0"], "--per-replica-batch-size must be greater than 0", ExitCode.BAD_INPUT),
        ("negative epochs", ["--epochs", "-1"], "--epochs must be greater than 0", ExitCode.BAD_INPUT),
        ("zero epochs", ["--epochs", "0"], "--epochs must be greater than 0", ExitCode.BAD_INPUT),
        ("negative learning rate", ["--learning-rate", "-1e-5"], "--learning-rate must be greater than 0", ExitCode.BAD_INPUT),
        ("validation fraction", ["--validation-fraction", "1.5"], "--validation-fraction must be between 0 and 1", ExitCode.BAD_INPUT),
        ("warmup ratio", ["--warmup-ratio", "1"], "--warmup-ratio must be in [0, 1)", ExitCode.BAD_INPUT),
        ("one label", ["--num-labels", "1"], "--num-labels must be at least 2", ExitCode.BAD_INPUT),
        ("max length too long", ["--max-length", "4096"], "exceeds this model's limit of 128 tokens", ExitCode.BAD_INPUT),
        ("model without weights", ["--model", str(no_weights)], "has no weights", ExitCode.BAD_INPUT),
        ("model without config", ["--model", str(no_config)], "has no config.json", ExitCode.BAD_INPUT),
        ("corrupt weights", ["--model", str(corrupt)], "cannot load weights", ExitCode.BAD_INPUT),
        ("model not a folder", ["--model", str(tmp_path / "h/train.csv")], "is not a folder", ExitCode.BAD_INPUT),
        ("num labels mismatch", ["--num-labels", "5"], "2 distinct labels but --num-labels is 5", ExitCode.BAD_INPUT),
        ("output inside input", ["--output", good["data"] + "/runs/x"], "lies inside --data", ExitCode.BAD_INPUT),
        ("bad format", ["--format", "xlsx"], "--format must be one of", ExitCode.BAD_INPUT),
        ("no header with names", ["--no-header"], "with --no-header, --text-column must be a 0-based column position", ExitCode.BAD_INPUT),
        ("bad run id", ["--run-id", "../escape"], "--run-id '../escape' must be letters", ExitCode.BAD_INPUT),
        ("promote without root", ["--promote-if-better", "accuracy"], "--promote-if-better needs --output-root", ExitCode.BAD_INPUT),
        ("signed url", ["--data", signed], "does not exist", ExitCode.BAD_INPUT),
        ("unknown option", ["--bogus", "1"], "No such option", ExitCode.USAGE),
        ("not a number", ["--epochs", "many"], "Invalid value for '--epochs'", ExitCode.USAGE),
        ("nul in text", ["--train", nul_text], "row 3: the text column holds a NUL byte (U+0000)",
         ExitCode.BAD_INPUT),
        ("fractional label", ["--train", half_label], "row 3: the label '0.5' is not a whole number", ExitCode.BAD_INPUT),
        ("object label", ["--train", object_label], 'row 2: the label is a JSON object ({"a": 1})', ExitCode.BAD_INPUT),
        ("negative seed", ["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295", ExitCode.BAD_INPUT),
        ("seed too big", ["--seed", str(2**32)], "--seed must be a whole number from 0 to 4294967295", ExitCode.BAD_INPUT),
        ("output is a file", ["--output", header_only], "exists and is not a folder", ExitCode.BAD_INPUT),
        ("checkpoints inside output", ["--checkpoint-dir", good["out"] + "/ckpt"], "--checkpoint-dir",
         ExitCode.BAD_INPUT),
    ]


N_CASES = 38


def snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("index", range(N_CASES))
def test_bad_input_is_one_line_with_exit_code_and_nothing_published(tmp_path, good, tiny_checkpoints, index):
    all_cases = cases(tmp_path, good, tiny_checkpoints)
    assert len(all_cases) == N_CASES
    case, extra, message, code = all_cases[index]
    base = {"--data": good["data"], "--model": good["model"], "--output": good["out"]}
    named = {a for a in extra if a.startswith("--")}
    if "--train" in named:
        named.add("--data")
    # Later flags win in click, so the case's own flags come last.
    args = ["train", *FAST, *[x for k, v in base.items() if k not in named for x in (k, v)], *extra]
    before = snapshot(tmp_path)
    result = invoke(args)
    assert result.exit_code == code, (case, result.output)
    assert message in result.output, (case, result.output)
    if code == ExitCode.BAD_INPUT:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], case
    assert "SECRET123abc" not in result.output, "a signed URL's signature reached the output"
    assert not (tmp_path / "out").exists(), case
    assert snapshot(tmp_path) == before, f"{case}: something under the test folder was written or changed"


def test_env_vars_configure_the_job_and_flags_win(tmp_path, good):
    env = {"FT_DATA": good["data"], "FT_MODEL": good["model"], "FT_OUTPUT": good["out"],
           "FT_PER_REPLICA_BATCH_SIZE": "0"}
    result = invoke(["train"], env=env)
    assert result.exit_code == ExitCode.BAD_INPUT and "--per-replica-batch-size must be greater than 0" in result.output
    result = invoke(["train", "--epochs", "0"], env={**env, "FT_PER_REPLICA_BATCH_SIZE": "8"})
    assert "--epochs must be greater than 0" in result.output


def test_real_process_exit_code_for_bad_data(tmp_path, good):
    proc = run_job(["train", "--data", str(tmp_path / "missing"), "--model", good["model"], "--output", good["out"]])
    assert proc.returncode == ExitCode.BAD_INPUT
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'missing'} does not exist: check the path"
    assert not (tmp_path / "out").exists()


def test_gcs_bad_inputs(gcs, gcs_server, good, tmp_path):
    gcs.create_bucket("bad-in")
    b = gcs.bucket("bad-in")
    b.blob("d/train.csv").upload_from_string("text,label\nx,0\ny,1\n")
    b.blob("d/train/../../escape.csv").upload_from_string("text,label\nx,0\ny,1\n")
    env = {"STORAGE_EMULATOR_HOST": gcs_server.url}
    no_bucket = invoke(["train", "--data", "gs://no-such-bucket-x/d", "--model", good["model"],
                        "--output", good["out"], *FAST], env=env)
    assert no_bucket.exit_code == ExitCode.BAD_INPUT and "not found" in no_bucket.output
    escape = invoke(["train", "--train", "gs://bad-in/d/train/", "--model", good["model"],
                     "--output", good["out"], *FAST], env=env)
    assert escape.exit_code == ExitCode.BAD_INPUT and "refusing object name" in escape.output
    assert not list(tmp_path.rglob("escape.csv"))
    assert not (tmp_path / "out").exists()

"""Hyper-parameter sweep end to end: 3 tiny-model trials as separate, concurrent processes of the
real CLI (`sweep-trial` with JOB_COMPLETION_INDEX, as the Indexed Job of k8s/overlays/sweep runs
them), then the summary and the champion; and the parsing of FT_SWEEP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from job import sweep
from job.errors import ConfigError, ExitCode


def test_three_trials_publish_and_the_last_summarizes_and_promotes_the_best(tiny_checkpoints, toy_data, tmp_path):
    root = tmp_path / "root"
    spec = {"name": "lr", "grid": {"learning_rate": [1e-5, 3e-3, 1e-2]}}
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "FT_SWEEP": json.dumps(spec), "FT_OUTPUT_ROOT": str(root),
           "FT_DATA": str(toy_data), "FT_MODEL": str(tiny_checkpoints["tf"]), "FT_EPOCHS": "1",
           "FT_MAX_TRAIN_EXAMPLES": "128", "FT_PER_REPLICA_BATCH_SIZE": "16", "FT_MAX_LENGTH": "32",
           "FT_RUN_ID": "ignored-job-name", "FT_PROMOTE_IF_BETTER": "accuracy:0"}
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py"), "sweep-trial"],
                              env={**env, "JOB_COMPLETION_INDEX": str(i)}, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / f"trial{i}.log", "w"), cwd=ROOT) for i in range(3)]
    codes = [p.wait(timeout=600) for p in procs]
    logs = [(tmp_path / f"trial{i}.log").read_text() for i in range(3)]
    print(f"\n3 concurrent trials done in {time.monotonic() - t0:.1f} s")
    assert codes == [0, 0, 0], "\n".join(log[-2000:] for log in logs)
    runs = {i: json.loads((root / "runs" / f"lr-{i}" / "metrics.json").read_text()) for i in range(3)}
    for i, m in runs.items():  # each trial trained with its own setting, in its own folder
        assert m["run_id"] == f"lr-{i}" and m["config"]["train"]["learning_rate"] == spec["grid"]["learning_rate"][i]
        assert m["config"]["train"]["epochs"] == 1 and not m["config"]["output"]["promote_if_better"]
    assert not (root / "runs" / "ignored-job-name").exists()
    summary = json.loads((root / "sweeps" / "lr.json").read_text())
    assert [t["run"] for t in summary["trials"]] == ["lr-0", "lr-1", "lr-2"]
    assert [t["settings"] for t in summary["trials"]] == [{"learning_rate": v} for v in spec["grid"]["learning_rate"]]
    for t in summary["trials"]:
        assert t["metrics"]["accuracy"] == runs[t["index"]]["final_evaluation"]["accuracy"]
    best = max(range(3), key=lambda i: (runs[i]["final_evaluation"]["accuracy"], -i))
    assert summary["best"] == f"lr-{best}" and summary["metric"] == "accuracy"
    champion = json.loads((root / "champion.json").read_text())
    assert champion["run"] == f"lr-{best}" and champion["uri"] == str(root / "runs" / f"lr-{best}")
    # Only the trial that found all three published wrote it; the others said they were waiting.
    assert sum("best trial" in log for log in logs) >= 1
    assert sum("trials published (waiting for" in log for log in logs) >= 1 or len(set(codes)) == 1

    # The summary step again (e.g. `entrypoint.py sweep-summary`): same bytes, champion unchanged.
    before = (root / "sweeps" / "lr.json").read_bytes(), (root / "champion.json").read_bytes()
    again = subprocess.run([sys.executable, str(ROOT / "entrypoint.py"), "sweep-summary"], env=env,
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ((root / "sweeps" / "lr.json").read_bytes(), (root / "champion.json").read_bytes()) == before


def test_grid_and_seeded_random_search_give_every_pod_the_same_trials():
    g = sweep.parse(json.dumps({"grid": {"learning_rate": [1e-5, 2e-5], "epochs": [2, 3], "seed": [1, 2]}}), "nightly")
    assert g.name == "nightly" and len(g.trials) == 8
    assert g.trials[0] == {"learning_rate": 1e-5, "epochs": 2, "seed": 1}
    assert g.trials[1] == {"learning_rate": 1e-5, "epochs": 2, "seed": 2}  # the last key varies fastest
    assert sweep.trial_env(g, 7) == {"FT_LEARNING_RATE": "2e-05", "FT_EPOCHS": "3", "FT_SEED": "2", "FT_RUN_ID": "nightly-7"}
    spec = json.dumps({"name": "r", "random": {"trials": 5, "seed": 7, "learning_rate": {"log_uniform": [1e-5, 1e-3]},
                                               "epochs": [1, 2, 3]}})
    a, b = sweep.parse(spec, "x"), sweep.parse(spec, "y")
    assert a == b and len(a.trials) == 5 and len({t["learning_rate"] for t in a.trials}) == 5
    assert all(1e-5 <= t["learning_rate"] <= 1e-3 and t["epochs"] in (1, 2, 3) for t in a.trials)


BAD = [("{", "not valid JSON"), ('{"grid": {}}', "non-empty lists"), ('{"grid": {"lr": [1]}}', "unknown setting"),
       ('{"grid": {"epochs": [1.5]}}', "non-negative int"), ('{"random": {"trials": 0}}', '"trials"'),
       ('{"grid": {"seed": [1]}, "random": {}}', '"grid" or "random"'), ('{"name": "Bad_Name", "grid": {"seed": [1]}}',
                                                                       "lower-case")]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_malformed_sweeps_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        sweep.parse(text, "ok")


def test_a_trial_index_outside_the_sweep_is_a_usage_error(tmp_path):
    env = {**os.environ, "FT_SWEEP": '{"grid": {"seed": [1, 2]}}', "FT_OUTPUT_ROOT": str(tmp_path), "FT_RUN_ID": "s",
           "JOB_COMPLETION_INDEX": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "entrypoint.py"), "sweep-trial"], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == ExitCode.BAD_INPUT
    assert proc.stderr.strip().splitlines()[-1] == ("error: trial index 2 is outside the sweep's 2 trials: set the "
                                                    "Indexed Job's completions to 2")
    assert not list(tmp_path.iterdir()), "nothing written"

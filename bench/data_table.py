"""The README's data-benchmark table, generated from a committed `make bench-data` result file.

    python -m bench.data_table bench/results/data-<time>.json          # print the block
    python -m bench.data_table --update README.md                      # regenerate blocks in place
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- generated: python -m bench\.data_table (\S+) -->\n(.*?)^<!-- end generated -->$",
                    re.M | re.S)


def table(report: dict) -> str:
    head = ["Rows", "CSV MB", "read + validate s", "rows/s", "peak after read MB", "tokenize s", "rows/s",
            "tokenize CPU s", "tokens", "report + plan s", "peak RSS MB", "over start MB", "bytes/row"]
    rows = [[f"{r['rows']:,}", f"{r['file_mb']:.0f}", f"{r['load_seconds']:.1f}", f"{r['load_rows_per_second']:,}",
             f"{r['peak_rss_after_load_mb']:,.0f}", f"{r['tokenize_seconds']:.1f}", f"{r['tokenize_rows_per_second']:,}",
             f"{r['tokenize_cpu_seconds']:.1f}" if "tokenize_cpu_seconds" in r else "-", f"{r['tokens']:,}",
             f"{r['report_seconds']:.1f} + {r['plan_seconds']:.1f}" if "report_seconds" in r else "-",
             f"{r['peak_rss_mb']:,.0f}", f"{r['peak_over_start_mb']:,.0f}", f"{r['bytes_per_row_over_start']:,}"]
            for r in report["results"]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    cores = {r.get("cores") for r in report["results"]}
    lines += ["", f"Measured {report['measured_at']} UTC on {', '.join(map(str, sorted(cores)))} cores "
              "(shared with other work), `data.load` + `features.encode` at max_length 128 with the packaged "
              "MiniLM tokenizer" + ("; then the data report and one epoch's batch plan (batch 32)"
                                    if any("report_seconds" in r for r in report["results"]) else "") + "."]
    return "\n".join(lines)


def marked(report: dict, shown: str) -> str:
    return f"<!-- generated: python -m bench.data_table {shown} -->\n{table(report)}\n<!-- end generated -->"


def blocks_in(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2).rstrip("\n")) for m in MARKER.finditer(text)]


def update(text: str) -> str:
    return MARKER.sub(lambda m: marked(json.loads((ROOT / m.group(1)).read_text()), m.group(1)), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", nargs="?")
    p.add_argument("--update", nargs="+", metavar="MARKDOWN")
    a = p.parse_args(argv)
    if a.update:
        for f in a.update:
            text = Path(f).read_text()
            if (new := update(text)) != text:
                Path(f).write_text(new)
                print(f"updated {f}")
        return 0
    if not a.result:
        p.error("give a result file or --update FILES")
    print(marked(json.loads(Path(a.result).read_text()), a.result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark harness (`make bench`) runs end to end, so it cannot rot: the job and the seed
recipe on a tiny model for a few steps. The PyTorch contender is skipped here (its virtualenv is a
1 GB download); that its module stays importable without TensorFlow or the job is checked.

The READMEs' benchmark figures are generated blocks (`python -m bench.table FILE BLOCK`): each must
equal what the generator prints from the committed result file its marker names (no benchmark run)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT

# The benchmark sections: README.md's "### Benchmark" up to the next "## " heading, all of bench/README.md.
BENCH_DOCS = {"README.md": "### Benchmark (`make bench`)", "bench/README.md": None}
# A measured figure: a decimal, a percentage or a ratio ("80.9", "4.6%", "2.74x"); code spans aside.
FIGURE = re.compile(r"\d\.\d|\d\s*%|\d(\.\d+)?x\b")


def benchmark_section(doc: str) -> str:
    text = (ROOT / doc).read_text()
    heading = BENCH_DOCS[doc]
    if heading is None:
        return text
    start = text.index(heading)
    end = text.find("\n## ", start)
    return text[start:] if end == -1 else text[start:end]


def test_bench_table_prints_what_the_readmes_show(tmp_path):
    from bench import table

    report = {"settings": {"rows": 64}, "runs": {}, "targets": [],
              "summary": {"contenders": {"ours": {"examples_per_second": 80.94, "real_tokens_per_second": 1082.2,
                                                  "padding_fraction": 0.0461, "dev_accuracy": 0.85321,
                                                  "utilisation": 0.3371, "start_to_first_step_seconds": 21.84,
                                                  "export_seconds": 2.33, "wall_seconds": 160.2, "other_cpu_cores": 0.861,
                                                  "launch_to_done_seconds": 121.6}}}}
    assert "| ours (job defaults) | 80.9 | 1082 | 4.6% | 0.8532 | 33.7% | 21.8 | 2.3 | 122 | 160 | - | 0.86 |" in \
        table.contenders(report, "r.json")
    text = "before\n" + table.marked(report, "contenders", "bench/results/r.json") + "\nafter\n"
    [(shown, name, body)] = table.blocks_in(text)
    assert (shown, name, body) == ("bench/results/r.json", "contenders", table.contenders(report, shown))
    (tmp_path / "r.json").write_text(json.dumps(report))
    out = subprocess.run([sys.executable, "-m", "bench.table", str(tmp_path / "r.json"), "contenders"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert table.contenders(report, "r.json") in out and out.startswith("<!-- generated: python -m bench.table")


@pytest.mark.parametrize("doc", sorted(BENCH_DOCS))
def test_readme_benchmark_figures_equal_the_generator_output_of_their_committed_result_file(doc):
    from bench import table

    blocks = table.blocks_in(benchmark_section(doc))
    assert {"contenders", "targets"} <= {name for _, name, _ in blocks}, f"{doc}: no generated benchmark tables"
    for shown, name, body in blocks:
        result = ROOT / shown
        assert shown.startswith("bench/results/") and result.is_file(), f"{doc} names {shown}, which is not there"
        ignored = subprocess.run(["git", "check-ignore", "-q", shown], cwd=ROOT).returncode == 0
        assert not ignored, f"{shown} is git-ignored: the figures {doc} quotes would not be committed"
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", shown], cwd=ROOT, capture_output=True)
        assert tracked.returncode == 0, f"{shown} (quoted by {doc}) is not committed"
        expected = table.block(table.load(result), name, shown)
        assert body == expected, (f"{doc}: the {name} block differs from `python -m bench.table {shown} {name}`"
                                  " (regenerate: python -m bench.table --update README.md bench/README.md)")


@pytest.mark.parametrize("doc", sorted(BENCH_DOCS))
def test_readme_benchmark_tables_outside_generated_blocks_hold_no_unfiled_figures(doc):
    """A table that is not generated either holds no measured figure or says in its header that its
    figures are older measurements with no result file."""
    from bench import table

    rest = table.MARKER.sub("", benchmark_section(doc))
    tables, current = [], []
    for line in rest.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    for rows in tables:
        if "no result file" in rows[0]:
            continue
        for row in rows:
            assert not FIGURE.search(re.sub(r"`[^`]*`", "", row)), f"{doc}: a figure outside a generated block: {row}"


def test_bench_runs_ours_and_seed_recipe_and_reports_every_figure(tiny_checkpoints, toy_data, tmp_path, capsys):
    from bench import bench

    out = tmp_path / "result.json"
    code = bench.main(["--model", str(tiny_checkpoints["pt"]), "--train", str(toy_data / "train.csv"),
                       "--dev", str(toy_data / "validation.csv"), "--text-column", "text", "--rows", "96",
                       "--max-length", "32", "--batch-size", "16", "--learning-rate", "1e-3", "--no-torch",
                       "--matmul-size", "256", "--work", str(tmp_path / "work"), "--out", str(out), "--timeout", "300"])
    assert code == 0
    report = json.loads(out.read_text())
    s = report["summary"]["contenders"]
    assert set(s) == {"ours", "seed"}
    for figures in s.values():
        assert figures["examples_per_second"] > 0 and figures["real_tokens_per_second"] > 0
        assert 0 <= figures["padding_fraction"] < 1 and 0 <= figures["dev_accuracy"] <= 1
        assert 0 < figures["utilisation"] and figures["start_to_first_step_seconds"] > 0
    # Both trained on the same 96 rows: same real tokens; ours computes fewer padded ones.
    runs = report["runs"]
    assert runs["ours"][0]["real_tokens"] == runs["seed"][0]["real_tokens"]
    assert s["ours"]["padding_fraction"] < s["seed"]["padding_fraction"]
    assert runs["ours"][0]["train_examples"] == 96 and 0 <= s["ours"]["input_share_of_step"] < 1
    assert report["probe"]["tokenize"]["rows"] == 320 and report["summary"]["matmul_flops_median"] > 0
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {"ours", "tokenize"}
    # Whole process, launch to published outputs: each contender's, and ours split into phases that
    # add up to it (the rest, outside every named phase, is "other" and small).
    names = {t["target"] for t in report["targets"]}
    assert {"seed recipe whole wall time / ours", "ours launch -> first optimizer step (s)"} <= names
    parts = s["ours"]["phase_breakdown_seconds"]
    for label in ("ours", "seed"):
        assert 0 < s[label]["launch_to_first_step_seconds"] < s[label]["launch_to_done_seconds"]
        assert s[label]["launch_to_done_seconds"] <= runs[label][0]["wall_seconds"]
    assert sum(parts.values()) == pytest.approx(s["ours"]["launch_to_done_seconds"], abs=0.05)
    assert all(v >= 0 for k, v in parts.items() if k != "other") and parts["imports"] > 0 and parts["first_step"] > 0
    assert abs(parts["other"]) < 0.25 * s["ours"]["launch_to_done_seconds"]
    assert runs["ours"][0]["checkpoint_saves"] >= 1 and parts["checkpoint_saves"] > 0
    assert "ours (job defaults)" in report["table"] and "seed recipe" in report["table"]
    assert report["probe"]["tokenize"]["path"].startswith("job.model.load_tokenizer + job.features.encode")
    # make bench ends with the READMEs' Markdown blocks of the file it wrote
    from bench import table

    printed = capsys.readouterr().out
    assert table.render(report, bench._shown(out)) in printed
    assert set(parts) == set(table.PHASES)
    assert "| **whole process** |" in table.phases(report, "r.json")


def test_pytorch_contender_needs_neither_tensorflow_nor_the_job():
    check = ("import sys, bench.torch_peer, bench.common; "
             "assert not {'tensorflow', 'job', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True)

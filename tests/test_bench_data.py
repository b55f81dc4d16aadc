"""`make bench-data` cannot rot: its measurement runs on a few rows here, and the README's data
benchmark table equals what bench.data_table prints from the committed result file it names."""

from __future__ import annotations

import subprocess

from conftest import ROOT, build_tokenizer


def test_data_bench_measures_every_phase_on_a_small_file(tmp_path):
    from bench import data_bench, data_table

    tok = build_tokenizer(tmp_path / "tok")
    tok.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "tok/config.json").write_text('{"model_type": "bert", "max_position_embeddings": 128}')
    r = data_bench.measure(500, tmp_path, tmp_path / "tok")
    assert r["rows"] == 500 and r["tokens"] > 500 * 5
    assert r["load_rows_per_second"] > 0 and r["tokenize_rows_per_second"] > 0
    assert r["peak_rss_mb"] >= r["peak_rss_after_load_mb"] > 0
    assert r["batches"] == 16 and r["report_seconds"] >= 0 and r["plan_seconds"] >= 0  # 500 rows, batch 32
    assert "| 500 |" in data_table.table({"measured_at": "x", "results": [r]})


def test_readme_data_benchmark_equals_its_committed_result_file():
    from bench import data_table

    blocks = data_table.blocks_in((ROOT / "README.md").read_text())
    assert blocks, "README.md has no generated data-benchmark table"
    for shown, body in blocks:
        assert shown.startswith("bench/results/") and (ROOT / shown).is_file(), shown
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", shown], cwd=ROOT, capture_output=True)
        assert tracked.returncode == 0, f"{shown} is not committed"
        import json

        assert body == data_table.table(json.loads((ROOT / shown).read_text())), \
            "regenerate: python -m bench.data_table --update README.md"

"""The exit codes are defined once (job/errors.py ExitCode) and everything that lists them agrees:
the README's exit-code table (codes, names, a meaning and a retry answer for each) and the
Kubernetes podFailurePolicy (the codes the table says not to retry are exactly those that fail the
Job at once; see also tests/test_k8s.py, which holds each manifest to ExitCode's names)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from job.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def exit_code_table(text: str) -> list[dict[str, str]]:
    """The rows of the first table under the README's '## Exit codes' heading, by column name."""
    section = re.search(r"^## Exit codes\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## Exit codes' section"
    lines = section.group(1).splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    assert start is not None, "no table in the README's exit-code section"
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, separator, *rows = table
    assert all(re.fullmatch(r":?-+:?", c) for c in separator), separator
    header = [h.lower().rstrip("?") for h in header]
    assert {"code", "name", "meaning", "retry"} <= set(header), header
    return [dict(zip(header, row, strict=True)) for row in rows]


def documented() -> tuple[dict[int, dict], dict[int, dict]]:
    """({code: row} of ExitCode members, {code: row} of the others, e.g. 137 (SIGKILL))."""
    members, others = {}, {}
    for row in exit_code_table(README.read_text()):
        assert re.fullmatch(r"\d+", row["code"]), row
        code = int(row["code"])
        assert code not in members and code not in others, f"exit {code} listed twice"
        (members if re.fullmatch(r"`\w+`", row["name"]) else others)[code] = row
    return members, others


def test_readme_table_lists_exactly_the_exit_codes_of_job_errors():
    members, others = documented()
    table = {code: row["name"].strip("`") for code, row in members.items()}
    assert table == {int(c): c.name for c in ExitCode}, (
        "README.md's exit-code table and job.errors.ExitCode differ: update both together")
    for code, row in members.items():
        assert row["meaning"], f"exit {code} has no meaning in the README"
        if code != ExitCode.SUCCESS:
            assert re.match(r"(yes|no|maybe)\b", row["retry"]), f"exit {code}: Retry? must say yes, no or maybe"
    # Rows that are not ExitCode members are deaths by a signal (128 + N), named by that signal.
    for code, row in others.items():
        assert code > 128, f"exit {code} is documented but is not in job.errors.ExitCode"
        name = signal.Signals(code - 128).name
        assert row["name"] == f"({name})", f"exit {code} is 128 + {name}: name it ({name})"
        assert row["meaning"] and re.match(r"(yes|no|maybe)\b", row["retry"]), row


def test_exit_code_table_parser_sees_a_missing_or_renamed_code():
    """The check above can fail: a table without a code, or with a renamed one, differs from ExitCode."""
    text = README.read_text()
    rows = exit_code_table(text)
    assert len(rows) >= len(ExitCode)
    line = next(line for line in text.splitlines() if line.startswith("| 3 | `BAD_INPUT`"))
    for broken in (text.replace(line + "\n", ""), text.replace("`BAD_INPUT`", "`BAD_DATA`")):
        names = {int(r["code"]): r["name"].strip("`") for r in exit_code_table(broken) if r["name"].startswith("`")}
        assert names != {int(c): c.name for c in ExitCode}


def _codes(phrase: str) -> set[int]:
    return {int(n) for n in re.findall(r"\d+", phrase)}


@pytest.fixture(scope="module")
def fail_job_codes() -> dict[str, set[int]]:
    """{kustomization: exit codes of its podFailurePolicy FailJob rule}, from the rendered manifests."""
    import test_k8s  # its rendering helpers: one way to read the manifests

    if test_k8s.KUBECTL is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    out = {}
    for path, name in zip(test_k8s.KUSTOMIZATIONS, test_k8s.ALL_IDS, strict=True):
        if name not in test_k8s.IDS:
            continue  # the TFJob example has no podFailurePolicy
        spec = test_k8s.job_spec(test_k8s.workload(test_k8s.kustomize(path)))
        out[name] = {c for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"
                     for c in r["onExitCodes"]["values"]}
    return out


def test_pod_failure_policy_fails_the_job_exactly_on_the_codes_the_readme_says_not_to_retry(fail_job_codes):
    members, others = documented()
    rows = {**members, **others}
    never = {code for code, row in rows.items() if row["retry"].startswith("no")}
    retried = {code for code, row in rows.items() if row["retry"].startswith(("yes", "maybe"))}
    assert never and retried
    for name, codes in fail_job_codes.items():
        assert codes == never, f"{name}: podFailurePolicy FailJob {sorted(codes)}, README 'no' {sorted(never)}"
    # The README's sentence on how Kubernetes retries names the same codes.
    text = " ".join(README.read_text().split())
    sentence = re.search(r"How Kubernetes retries \(podFailurePolicy\): exits ([\d, and]+) fail the Job at once;"
                         r".*? ([\d, and]+) get a new pod", text)
    assert sentence, "README: the 'How Kubernetes retries (podFailurePolicy)' sentence is gone or reworded"
    assert _codes(sentence.group(1)) == never
    assert _codes(sentence.group(2)) >= retried - {0}, "a retried exit code is missing from that sentence"
    assert not _codes(sentence.group(2)) & never

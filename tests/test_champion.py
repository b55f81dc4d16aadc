"""job.champion: promotion rules (pure) and the conditional pointer on a local folder and on gs://
(the real fake-gcs-server), including two promotions racing in threads."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from job import champion
from job.champion import Decision, decide, parse_promote_spec
from job.errors import ConfigError

FP = "fp-validation-1"


def run_metrics(accuracy: float = 0.8, loss: float = 0.5, macro_f1: float | None = None,
                fingerprint: str | None = FP) -> dict:
    """The parts of a metrics.json that promotion reads."""
    return {"final_evaluation": {"accuracy": accuracy, "macro_f1": accuracy if macro_f1 is None else macro_f1,
                                 "loss": loss, "examples": 200},
            "data": {"validation_fingerprint": fingerprint}}


def pointer(run: str, **kw) -> dict:
    return champion.candidate(run, f"gs://b/runs/{run}", run_metrics(**kw))


# --------------------------------------------------------------------------------------------
# Pure

@pytest.mark.parametrize("spec, expected", [
    ("accuracy:0.005", ("accuracy", 0.005)), ("loss", ("loss", 0.0)), (" Macro-F1:0 ", ("macro_f1", 0.0)),
    ("macro_f1:1e-3", ("macro_f1", 0.001))])
def test_parse_promote_spec(spec, expected):
    assert parse_promote_spec(spec) == expected


@pytest.mark.parametrize("spec", ["f1", "accuracy:", "accuracy:abc", "accuracy:-0.1", "loss:nan", "", "accuracy:inf"])
def test_parse_promote_spec_refuses_malformed(spec):
    with pytest.raises(ConfigError):
        parse_promote_spec(spec)


def test_decide_higher_is_better_with_min_delta():
    champ = pointer("r1", accuracy=0.900)
    assert decide(pointer("r2", accuracy=0.905), champ, "accuracy", 0.005).promote  # exactly the delta passes
    assert not decide(pointer("r2", accuracy=0.904), champ, "accuracy", 0.005).promote
    tie = decide(pointer("r2", accuracy=0.900), champ, "accuracy", 0.0)
    assert not tie.promote and tie.reason.startswith("not better: accuracy 0.9000 vs champion r1's 0.9000")
    assert not decide(pointer("r2", accuracy=0.8), champ, "accuracy", 0.0).promote


def test_decide_loss_lower_is_better():
    champ = pointer("r1", accuracy=0.9, loss=0.40)
    better = decide(pointer("r2", accuracy=0.8, loss=0.30), champ, "loss", 0.05)
    assert better == Decision(True, "better: loss 0.3000 vs champion r1's 0.4000 (lower is better, minimum gain 0.05)")
    assert not decide(pointer("r2", accuracy=0.99, loss=0.45), champ, "loss", 0.0).promote
    assert not decide(pointer("r2", loss=0.38), champ, "loss", 0.05).promote  # better, but by less than 0.05


def test_decide_refuses_other_validation_data_unless_forced():
    champ = pointer("r1", accuracy=0.7)
    new = pointer("r2", accuracy=0.99, fingerprint="fp-other")
    refused = decide(new, champ, "accuracy", 0.0)
    assert not refused.promote and "different validation data" in refused.reason and "fp-other" in refused.reason
    assert not decide(pointer("r2", accuracy=0.99, fingerprint=None), champ, "accuracy", 0.0).promote
    forced = decide(pointer("r2", accuracy=0.5, fingerprint="fp-other"), champ, "accuracy", 0.0, force=True)
    assert forced.promote and forced.reason.startswith("forced")


def test_decide_first_run_and_broken_inputs():
    assert decide(pointer("r1", accuracy=0.1), None, "accuracy", 0.5).reason.startswith("no champion yet")
    nan = decide(pointer("r2", accuracy=float("nan")), None, "accuracy", 0.0, force=True)
    assert not nan.promote and "no finite validation accuracy" in nan.reason
    unreadable = {"unreadable": "champion.json is not valid JSON"}
    assert not decide(pointer("r2", accuracy=0.9), unreadable, "accuracy", 0.0).promote
    assert decide(pointer("r2", accuracy=0.9), unreadable, "accuracy", 0.0, force=True).promote
    with pytest.raises(ConfigError):
        decide(pointer("r2", accuracy=0.9), None, "f1", 0.0)


# --------------------------------------------------------------------------------------------
# Storage: the same behaviour on a local folder and on gs://

@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs")
    gcs = request.getfixturevalue("gcs")
    bucket = f"champ-{uuid.uuid4().hex[:12]}"
    gcs.create_bucket(bucket)
    return f"gs://{bucket}/runs"


def promote(root, run, spec="accuracy:0.005", force=False, **kw) -> Decision:
    return champion.promote_if_better(root, run, f"{root}/{run}", run_metrics(**kw), spec, force)


def test_better_run_promotes_and_worse_does_not(root):
    assert champion.read_champion(root) == (None, 0)
    first = promote(root, "r1", accuracy=0.80)
    assert first.promote and first.reason.startswith("no champion yet")
    ptr, token = champion.read_champion(root)
    assert ptr["run"] == "r1" and ptr["uri"] == f"{root}/r1" and ptr["validation_fingerprint"] == FP
    assert ptr["metrics"] == {"accuracy": 0.8, "macro_f1": 0.8, "loss": 0.5, "examples": 200}
    assert ptr["promoted_at"].endswith("+00:00") and ptr["reason"] == first.reason

    worse = promote(root, "r2", accuracy=0.803)  # better, but by less than 0.005
    assert not worse.promote and "not better" in worse.reason
    assert champion.read_champion(root) == (ptr, token), "a refused run leaves the pointer untouched"

    better = promote(root, "r3", accuracy=0.85)
    assert better.promote and champion.read_champion(root)[0]["run"] == "r3"
    again = promote(root, "r3", accuracy=0.85)
    assert again.promote and "is the champion" in again.reason


def test_loss_metric_promotes_the_lower_loss(root):
    promote(root, "r1", spec="loss", accuracy=0.9, loss=0.40)
    assert not promote(root, "r2", spec="loss", accuracy=0.95, loss=0.41).promote
    assert promote(root, "r3", spec="loss", accuracy=0.85, loss=0.39).promote
    assert champion.read_champion(root)[0]["run"] == "r3"


def test_other_validation_data_is_refused_and_force_overrides(root):
    promote(root, "r1", accuracy=0.7)
    refused = promote(root, "r2", accuracy=0.99, fingerprint="fp-validation-2")
    assert not refused.promote and "different validation data" in refused.reason
    assert champion.read_champion(root)[0]["run"] == "r1"
    forced = promote(root, "r2", accuracy=0.99, fingerprint="fp-validation-2", force=True)
    assert forced.promote
    ptr = champion.read_champion(root)[0]
    assert ptr["run"] == "r2" and ptr["validation_fingerprint"] == "fp-validation-2"
    # From now on runs on the new validation set compare against r2.
    assert not promote(root, "r3", accuracy=0.98, fingerprint="fp-validation-2").promote


def test_write_with_a_stale_token_is_refused(root):
    body = {**pointer("r1", accuracy=0.5), "promoted_at": "x", "reason": "test"}
    t1 = champion.write_champion(root, body, 0)
    with pytest.raises(champion.ChampionMoved):
        champion.write_champion(root, {**body, "run": "r2"}, 0)  # create-only: one exists
    t2 = champion.write_champion(root, {**body, "run": "r3"}, t1)
    assert t2 != t1
    with pytest.raises(champion.ChampionMoved):
        champion.write_champion(root, {**body, "run": "r4"}, t1)
    assert champion.read_champion(root) == ({**body, "run": "r3"}, t2)


@pytest.mark.parametrize("scores", [(0.80, 0.90), (0.90, 0.80), (0.85, 0.85)])
def test_two_concurrent_promotions_leave_one_pointer_naming_the_better_or_first(root, scores, monkeypatch):
    """Both runs read "no champion" before either writes (a barrier after the first read), so both
    writes race; the loser re-reads and re-decides against the winner."""
    real_read = champion.read_champion
    barrier = threading.Barrier(2)
    seen = threading.local()
    writes: list[str] = []
    real_write = champion.write_champion

    def read_then_wait(root_uri):
        result = real_read(root_uri)
        if not getattr(seen, "first", False):
            seen.first = True
            barrier.wait(timeout=30)
        return result

    def recording_write(root_uri, ptr, token):
        out = real_write(root_uri, ptr, token)
        writes.append(ptr["run"])
        return out

    monkeypatch.setattr(champion, "read_champion", read_then_wait)
    monkeypatch.setattr(champion, "write_champion", recording_write)
    runs = {"a": scores[0], "b": scores[1]}
    with ThreadPoolExecutor(2) as pool:
        futures = {r: pool.submit(promote, root, r, "accuracy", False, accuracy=acc) for r, acc in runs.items()}
        decisions = {r: f.result(timeout=60) for r, f in futures.items()}

    final = real_read(root)[0]
    assert final["run"] == writes[-1]
    if scores[0] != scores[1]:
        best = max(runs, key=runs.get)
        assert final["run"] == best and decisions[best].promote
        worse = min(runs, key=runs.get)
        # The worse run either lost the race and was refused, or wrote first and was replaced.
        assert decisions[worse].promote == (writes == [worse, best])
        assert writes in ([best], [worse, best])
    else:
        assert len(writes) == 1, "on a tie the first writer stays champion"
        (winner,) = writes
        assert final["run"] == winner and [r for r, d in decisions.items() if d.promote] == [winner]
        loser = "b" if winner == "a" else "a"
        assert "re-decided after a concurrent promotion" in decisions[loser].reason


def test_many_racing_local_promotions_never_tear_the_pointer(tmp_path):
    root = str(tmp_path / "runs")
    accs = [0.70 + 0.01 * i for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        decisions = list(pool.map(lambda i: promote(root, f"r{i}", "accuracy", accuracy=accs[i]), range(8)))
    final = json.loads((tmp_path / "runs" / "champion.json").read_text())
    promoted = {f"r{i}" for i, d in enumerate(decisions) if d.promote}
    assert final["run"] in promoted
    # Anything still better than the final champion can only be a run that reported losing.
    for i, d in enumerate(decisions):
        if accs[i] > final["metrics"]["accuracy"]:
            assert not d.promote and d.reason.startswith("lost")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".champion.json.lock", "champion.json"]


def test_damaged_local_pointer_blocks_promotion_until_forced(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "champion.json").write_text("{not json")
    ptr, token = champion.read_champion(str(root))
    assert "not valid JSON" in ptr["unreadable"] and token != 0
    refused = promote(str(root), "r1", accuracy=0.9)
    assert not refused.promote and "cannot be scored" in refused.reason
    assert promote(str(root), "r1", accuracy=0.9, force=True).promote
    assert champion.read_champion(str(root))[0]["run"] == "r1"


def test_non_finite_scores_are_stored_as_null(tmp_path):
    root = str(tmp_path / "runs")
    d = champion.promote_if_better(root, "r1", f"{root}/r1", run_metrics(accuracy=0.9, loss=float("inf")), "accuracy")
    assert d.promote
    assert json.loads((tmp_path / "runs" / "champion.json").read_text())["metrics"]["loss"] is None

"""benchmarks/joint_experiment.py (issue 22): resumable, skips what the results hold, and the committed table.

Toy backbones (the script's smoke settings), tiny Fashion-MNIST, CPU, seconds.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

import lgm.distillation
import lgm.rundir
from lgm.errors import LgmError
from tests.test_distill import StopAfter

ROOT = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("joint_experiment", ROOT / "benchmarks" / "joint_experiment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("joint_experiment", module)
    spec.loader.exec_module(module)
    return module


je = load_script()


@pytest.fixture()
def experiment(fashion_root, tmp_path):
    je.register_smoke_backbones()

    def make(name: str, **kw):
        return je.Experiment(je.SMOKE_SETTINGS, tmp_path / name / "work", tmp_path / name / "results",
                             data_root=str(fashion_root), cache_dir=str(tmp_path / "cache"), log=lambda m: None, **kw)
    return make


def files(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("set_name", ["lite0", "joint-sample"])
def test_interrupted_set_finishes_bit_identical_to_an_uninterrupted_one(experiment, monkeypatch, set_name):
    reference = experiment("reference")
    assert reference.run(je.plan([set_name], [0])) == [f"{set_name}_s0"]

    resumed = experiment("resumed")
    StopAfter.n = 7
    monkeypatch.setattr(lgm.distillation, "StopSignals", StopAfter)
    with pytest.raises(lgm.rundir.Interrupted, match=r"stopped by SIGTERM at step 8/12"):
        resumed.run(je.plan([set_name], [0]))
    run_dir = resumed.work / f"{set_name}_s0"
    assert lgm.rundir.RunDir(run_dir).load_checkpoint().step == 8
    assert not (resumed.results / f"{set_name}_s0").exists()  # nothing half-written in the results
    monkeypatch.undo()
    assert resumed.run(je.plan([set_name], [0])) == [f"{set_name}_s0"]
    assert [r["step"] for r in lgm.rundir.RunDir(run_dir).read_metrics()] == list(range(12))

    a, b = files(reference.results / f"{set_name}_s0"), files(resumed.results / f"{set_name}_s0")
    assert a.keys() == b.keys() == {"images.png", "eval.json", "set.json"}
    assert a["images.png"] == b["images.png"]
    assert (reference.work / f"{set_name}_s0" / "distilled.safetensors").read_bytes() == \
        (run_dir / "distilled.safetensors").read_bytes()
    ev_a, ev_b = json.loads(a["eval.json"]), json.loads(b["eval.json"])
    assert without_seconds(ev_a) == without_seconds(ev_b) and sorted(ev_a) == ["toy_smoke_a", "toy_smoke_b",
                                                                              "toy_smoke_c"]
    set_a, set_b = json.loads(a["set.json"]), json.loads(b["set.json"])
    assert {k: v for k, v in set_a.items() if k != "seconds"} == {k: v for k, v in set_b.items() if k != "seconds"}
    # The committed 8-bit images are the distilled ones, rounded (what the probes scored).
    images = je.load_result(resumed.results / f"{set_name}_s0").images
    made = lgm.DistilledSet.load(run_dir).images
    assert images.shape == made.shape and (images - made).abs().max() <= 0.5 / 255 + 1e-6


# Run in a child process that is then SIGKILLed: the smoke experiment with a slowed-down step (so that the kill
# lands mid-distillation) and a checkpoint every 4 steps.
CHILD = """
import sys, time
sys.path.insert(0, {bench!r})
import joint_experiment as je
import lgm.distillation
step = lgm.distillation.matching_step
def slow_step(*args, **kw):
    time.sleep(0.25)
    return step(*args, **kw)
lgm.distillation.matching_step = slow_step
je.register_smoke_backbones()
exp = je.Experiment(je.SMOKE_SETTINGS, {work!r}, {results!r}, data_root={data!r}, cache_dir={cache!r})
exp.checkpoint_every = 4
exp.run(je.plan([{set_name!r}], [0]))
"""


def test_sigkilled_mid_distillation_then_rerun_equals_an_uninterrupted_run(experiment, fashion_root, tmp_path):
    import os
    import signal
    import subprocess
    import time

    set_name = "joint-all"
    reference = experiment("reference")
    reference.run(je.plan([set_name], [0]))
    resumed = experiment("resumed")
    resumed.checkpoint_every = 4
    run_dir = resumed.work / f"{set_name}_s0"
    code = CHILD.format(bench=str(ROOT / "benchmarks"), work=str(resumed.work), results=str(resumed.results),
                        data=str(fashion_root), cache=str(resumed.cache_dir), set_name=set_name)
    child = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (run_dir / "checkpoint.safetensors").is_file() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    killed_at = lgm.rundir.RunDir(run_dir).load_checkpoint().step
    assert 0 < killed_at < 12 and not (resumed.results / f"{set_name}_s0").exists()
    assert resumed.run(je.plan([set_name], [0])) == [f"{set_name}_s0"]
    a, b = files(reference.results / f"{set_name}_s0"), files(resumed.results / f"{set_name}_s0")
    assert a["images.png"] == b["images.png"]
    assert without_seconds(json.loads(a["eval.json"])) == without_seconds(json.loads(b["eval.json"]))


def without_seconds(evals: dict) -> dict:
    return {bb: {k: v for k, v in r.items() if k != "seconds"} for bb, r in evals.items()}


def test_finished_results_are_not_redone_even_without_the_work_directory(experiment):
    import shutil

    first = experiment("x")
    tasks = je.plan(["baselines", "lite0", "opennsfw"], [0])
    assert first.run(tasks) == ["baselines_toy_smoke_a", "baselines_toy_smoke_b", "baselines_toy_smoke_c",
                                "lite0_s0", "opennsfw_s0"]
    before = {p: p.stat().st_mtime_ns for p in first.results.rglob("*")}
    shutil.rmtree(first.work)
    logged = []
    again = je.Experiment(first.settings, first.work, first.results, first.data_root, first.cache_dir,
                          log=logged.append)
    assert again.run(tasks) == []
    assert {p: p.stat().st_mtime_ns for p in first.results.rglob("*")} == before
    assert not first.work.exists() and len([m for m in logged if m.endswith("skipped")]) == 3
    # A new seed is added beside them; the finished ones stay as they are.
    assert again.run(je.plan(["lite0"], [0, 1])) == ["lite0_s1"]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_a_result_of_other_settings_is_refused(experiment):
    import dataclasses

    first = experiment("x")
    first.run(je.plan(["lite0"], [0]))
    other = dataclasses.replace(je.SMOKE_SETTINGS, repeats=3)
    with pytest.raises(LgmError, match=r"lite0_s0/set.json was made with other settings"):
        je.Experiment(other, first.work, first.results, first.data_root, first.cache_dir, log=lambda m: None).run(
            je.plan(["lite0"], [0]))


def test_budget_spent_starts_nothing(experiment):
    import time

    late = experiment("late", deadline=time.time() - 1)
    assert late.run(je.plan(["lite0"], [0])) == [] and not late.results.exists()


def test_budget_reached_during_a_distillation_checkpoints_it_and_stops(experiment, monkeypatch):
    import time

    step = lgm.distillation.matching_step

    started = []

    def slow_step(*args, **kw):  # 12 steps of 0.3 s: the deadline falls in the middle
        if not started:
            started.append(time.time())
            exp.deadline = started[0] + 1.5
        time.sleep(0.3)
        return step(*args, **kw)

    logged = []
    exp = experiment("x")
    exp.log = logged.append
    monkeypatch.setattr(lgm.distillation, "matching_step", slow_step)
    exp.deadline = time.time() + 60  # moved to 1.5 s after the first step once it starts (the timer is armed then)
    assert exp.run(je.plan(["lite0"], [0])) == []
    assert "the time budget is spent (stopped by SIGTERM" in logged[-1]
    stopped = lgm.rundir.RunDir(exp.work / "lite0_s0").load_checkpoint().step
    assert 0 < stopped < 12 and not (exp.results / "lite0_s0").exists()
    exp.deadline = None
    assert exp.run(je.plan(["lite0"], [0])) == ["lite0_s0"]


def test_doc_table_follows_every_result_even_when_the_budget_ends_the_baselines_midway(experiment, tmp_path):
    import time

    doc, readme = tmp_path / "doc.md", tmp_path / "README.md"
    doc.write_text(f"{je.DOC_BEGIN}\n{je.DOC_END}\n")
    readme.write_text(f"# readme\n{je.DOC_BEGIN}\nstale\n{je.DOC_END}\nend\n")

    def log(message):
        if message.startswith("baselines_toy_smoke_a: done"):
            exp.deadline = time.time() - 1  # spent: the next backbone's baselines do not start

    exp = experiment("x", docs=[doc, readme])
    exp.log = log
    assert exp.run(je.plan(["baselines", "lite0"], [0])) == ["baselines_toy_smoke_a"]
    assert sorted(p.name for p in exp.results.iterdir()) == ["baselines_toy_smoke_a"]
    table = je.doc_table(doc)
    assert table == je.table(exp.results, je.SMOKE_SETTINGS) == je.doc_table(readme)
    assert readme.read_text().startswith("# readme\n") and readme.read_text().endswith("end\n")
    line = next(line for line in table.splitlines() if line.startswith("| centroids"))
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    assert cells[2] != "–" and cells[3:5] == ["–", "–"]  # the first backbone's, not yet the other two


def test_max_sets_stops_after_that_many_tasks(experiment):
    exp = experiment("x")
    assert exp.run(je.plan(["lite0"], [0, 1, 2]), max_sets=2) == ["lite0_s0", "lite0_s1"]


def test_plan_puts_the_cheap_slice_first():
    assert je.plan(["joint-all", "lite0", "baselines", "opennsfw", "joint-sample"], [0, 1]) == [
        ("baselines", None), ("lite0", 0), ("lite0", 1), ("opennsfw", 0), ("joint-all", 0), ("joint-sample", 0),
        ("opennsfw", 1), ("joint-all", 1), ("joint-sample", 1)]


def test_table_is_read_from_the_result_files(experiment, tmp_path):
    exp = experiment("x")
    exp.run(je.plan(["baselines", "lite0"], [0, 1]))
    text = je.table(exp.results, je.SMOKE_SETTINGS)
    row = next(line for line in text.splitlines() if line.startswith("| single, toy_smoke_a |"))
    values = [json.loads((exp.results / f"lite0_s{s}" / "eval.json").read_text())["toy_smoke_a"]["top1"]["mean"]
              for s in (0, 1)]
    mean, std = statistics.fmean(values) * 100, statistics.pstdev(values) * 100
    assert row.split(" | ")[1] == "0,1" and row.split(" | ")[2] == f"**{mean:.1f} ± {std:.1f}**"
    # An edited result file shows in the regenerated table (and so in the doc test below).
    path = exp.results / "lite0_s1" / "eval.json"
    ev = json.loads(path.read_text())
    ev["toy_smoke_a"]["top1"]["mean"] = 0.123
    path.write_text(json.dumps(ev))
    assert je.table(exp.results, je.SMOKE_SETTINGS) != text
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{je.DOC_BEGIN}\nold\n{je.DOC_END}\nafter\n")
    je.write_doc_table(doc, exp.results, je.SMOKE_SETTINGS)
    assert je.doc_table(doc) == je.table(exp.results, je.SMOKE_SETTINGS)
    assert doc.read_text().startswith("intro\n") and doc.read_text().endswith(f"{je.DOC_END}\nafter\n")


@pytest.mark.parametrize("doc", ["docs/joint.md", "README.md"])
def test_committed_results_regenerate_the_table_in_the_docs(doc):
    results = ROOT / "docs" / "results" / "joint"
    assert je.doc_table(ROOT / doc) == je.table(results, je.SETTINGS)


def test_committed_results_are_small():
    results = ROOT / "docs" / "results" / "joint"
    total = sum(p.stat().st_size for p in results.rglob("*") if p.is_file()) if results.exists() else 0
    assert total < 20 * 2**20


def write_fake_result(results: Path, name: str, seed: int, top1: dict[str, float]) -> None:
    d = results / f"{name}_s{seed}"
    d.mkdir(parents=True)
    (d / "set.json").write_text(json.dumps({"seed": seed, "seconds": 60.0}))
    (d / "eval.json").write_text(json.dumps({n: {"top1": {"mean": v / 100}} for n, v in top1.items()}))


def test_target_check_pairs_each_joint_set_with_the_single_sets_of_its_seed(tmp_path):
    a, b, c = (je.SMOKE_SETTINGS.backbones[r] for r in je.ROLES)
    results = tmp_path / "results"
    (results / f"baselines_{b}").mkdir(parents=True)
    (results / f"baselines_{b}" / "baselines.json").write_text(
        json.dumps({"centroids": {"top1": {"values": [0.60, 0.64]}}, "random": [], "full": {"top1": {"values": [0.9]}}}))
    # (centroids on b: 62)
    # seed 0: every criterion holds; seed 1: the joint set is 2.5 below the single set on a.
    write_fake_result(results, "lite0", 0, {a: 80, b: 60, c: 70})        # mean 70
    write_fake_result(results, "opennsfw", 0, {a: 65, b: 78, c: 64})     # mean 69
    write_fake_result(results, "joint-all", 0, {a: 79, b: 78.5, c: 70})  # mean 75.83
    write_fake_result(results, "lite0", 1, {a: 80, b: 60, c: 70})
    write_fake_result(results, "opennsfw", 1, {a: 65, b: 78, c: 64})
    write_fake_result(results, "joint-all", 1, {a: 77.5, b: 78, c: 70})
    write_fake_result(results, "joint-sample", 2, {a: 80, b: 80, c: 80})  # no single sets of seed 2: not paired
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1:]
            for line in je.target_check(results, je.SMOKE_SETTINGS).splitlines()[2:]}
    assert rows[f"on {a}: joint − single {a} (≥ −2)"] == ["s0 -1.0, s1 -2.5", "–"]
    assert rows[f"on {b}: joint − single {b} (≥ −2)"] == ["s0 +0.5, s1 +0.0", "–"]
    assert rows["mean of the three: joint − the better single set (> 0)"] == ["s0 +5.8, s1 +5.2", "–"]
    assert rows[f"on {b}: joint − {b}'s centroids (> 0)"] == ["s0 +16.5, s1 +16.0", "–"]
    assert rows["**all four met**"] == ["in 1 of 2 seeds", "–"]
    # The check is part of the table the docs hold (and so of the committed-results test).
    assert je.target_check(results, je.SMOKE_SETTINGS) in je.table(results, je.SMOKE_SETTINGS)


def test_recheck_reprobes_a_committed_set_and_catches_a_score_that_does_not_match_it(experiment, fashion_root, capsys):
    exp = experiment("r")
    assert exp.run(je.plan(["lite0"], [0])) == ["lite0_s0"]
    rows = exp.recheck("lite0_s0")
    assert [r["backbone"] for r in rows] == list(je.SMOKE_SETTINGS.backbones.values())
    assert all(r["max_diff"] == 0 and r["committed"] == r["recomputed"] for r in rows)
    argv = ["--smoke", "--results", str(exp.results), "--data-root", str(fashion_root),
            "--cache-dir", str(exp.cache_dir)]
    assert je.main([*argv, "--recheck", "all"]) == 0
    assert capsys.readouterr().out.count("bit for bit (ok") == 3
    # A committed score that its images do not give: reported, and the exit status says so.
    ev_path = exp.results / "lite0_s0" / "eval.json"
    ev = json.loads(ev_path.read_text())
    b = je.SMOKE_SETTINGS.backbones["b"]
    ev[b]["top1"]["values"][1] += 0.25
    ev_path.write_text(json.dumps(ev))
    assert je.main([*argv, "--recheck", "lite0_s0", "--on", b]) == 1
    out = capsys.readouterr().out
    assert f"lite0_s0 on {b}: largest difference 25.00 points (MOVED" in out and out.count("\n") == 1
    assert je.main([*argv, "--recheck", "lite0_s0", "--on", b, "--tolerance", "0.3"]) == 0
    # Images that are not the ones recorded are refused, as is a set or a backbone the results do not hold.
    png = exp.results / "lite0_s0" / "images.png"
    png.write_bytes(png.read_bytes() + b"\0")
    assert je.main([*argv, "--recheck", "lite0_s0"]) == 1
    assert "is not the image its set.json was written with" in capsys.readouterr().err
    for bad, said in (("joint-all_s0", "the sets there: lite0_s0"), ("lite0_s0 --on nope", "no probes on nope")):
        name, *more = bad.split()
        assert je.main([*argv, "--recheck", name, *more]) == 1
        assert said in capsys.readouterr().err

"""Every script in benchmarks/ runs: each one's --smoke mode (tiny sizes, CPU, seconds) in a subprocess.

The outputs are parsed, not just the exit status: a smoke run that prints no
table, or a table of NaNs, fails.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, *args: str, timeout: float = 300) -> str:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, f"{name} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def numbers(pattern: str, text: str) -> list[float]:
    found = [float(m) for m in re.findall(pattern, text)]
    assert found, f"nothing matches {pattern!r} in:\n{text}"
    assert all(math.isfinite(v) for v in found), found
    return found


def test_every_script_has_a_smoke_test():
    tested = {"demo_variants.py", "eval_time.py", "features.py", "joint_table.sh", "joint_table_summary.py",
              "joint_experiment.py", "loader.py", "real_gradient_noise.py", "real_modes.py", "step.py", "gpu_check.py"}
    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh") and not p.name.startswith("_")}
    assert scripts <= tested, f"benchmarks without a smoke test here: {sorted(scripts - tested)}"


def test_demo_variants_smoke(tmp_path):
    out = run_script("demo_variants.py", "smoke", '{"init": "noise"}', "--smoke", "--out", str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["name"] == "smoke" and rows[0]["overrides"] == {"init": "noise"}
    assert len(rows[0]["top1"]) == 2 and all(0 <= v <= 100 for v in rows[0]["top1"])
    assert (tmp_path / "smoke" / "distilled.safetensors").is_file()
    (mean,) = numbers(r"smoke: top-1 ([\d.]+) ±", out)
    assert mean == pytest.approx(rows[0]["mean"], abs=0.05)


def test_eval_time_smoke():
    out = run_script("eval_time.py", "--smoke", "--repeats", "2")
    cold, warm = numbers(r"(?m)^(?:cold|warm):\s+([\d.]+) s", out)
    accs = numbers(r"top-1 ([\d.]+) ±", out)
    assert len(accs) == 2 and accs[0] == accs[1]  # the warm run reads the same features back
    assert all(0 <= a <= 100 for a in accs) and cold >= 0 and warm >= 0


def test_features_smoke():
    out = run_script("features.py", "--smoke")
    rates = numbers(r"([\d.]+) img/s", out)
    assert len(rates) == 3 * 3 and all(r > 0 for r in rates)  # 3 setups x (2 batch sizes + fwd/bwd)


def test_loader_smoke():
    out = run_script("loader.py", "--smoke")
    rows = dict(re.findall(r"(?m)^(decode, 1 worker|batches from the uint8 cache)\s+(\d+)$", out))
    assert set(rows) == {"decode, 1 worker", "batches from the uint8 cache"}, out
    assert all(int(v) > 0 for v in rows.values())
    assert len(numbers(r"(?m)^\s+1\s+10\s+10\s+100\s+([\d.]+)", out)) == 1


def test_real_gradient_noise_smoke():
    out = run_script("real_gradient_noise.py", "--smoke")
    rows = [(int(n), float(c)) for n, c in re.findall(r"(?m)^\s+(\d+) \| (-?[\d.]+)$", out)]
    assert [n for n, _ in rows] == [40, 100], out  # 40, and half the 200-image pool
    assert all(-1 <= c <= 1 for _, c in rows)


def test_real_modes_smoke(tmp_path):
    out = run_script("real_modes.py", "--smoke", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"live/s0", "cached/s0", "full/s0"}
    for mode in ("live", "cached", "full"):
        (acc,) = numbers(rf"(?m)^\| {mode} \| ([\d.]+) \|", out)
        assert acc == pytest.approx(results[f"{mode}/s0"]["top1"]["mean"] * 100, abs=0.05)
    recorded = json.loads((tmp_path / "full_s0" / "real_side.json").read_text())
    assert recorded["mode"] == "run-cache"  # the full-gradient run did take the cached real side


def test_joint_table_summary_smoke():
    out = run_script("joint_table_summary.py", "--smoke")
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert lines[0] == "| set | seeds | on toy_cnn | mean |", out
    sets = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(sets) == {"single", "joint-all", "centroids (chosen on the evaluating backbone)",
                         "random real (5 selections, mean ± std)"}
    # Same-model cells are bold (the toy backbone is one of both sets'), with seeds 0 and 1.
    assert re.search(r"\| single \| 0,1 \| \*\*[\d.]+ ± [\d.]+\*\* \|", sets["single"]), sets["single"]
    assert re.search(r"\| [\d.]+ \|", sets["centroids (chosen on the evaluating backbone)"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_joint_experiment_smoke():
    out = run_script("joint_experiment.py", "--smoke", "--seeds", "0")
    assert "made now: baselines_toy_smoke_a, baselines_toy_smoke_b, baselines_toy_smoke_c, lite0_s0, opennsfw_s0, " \
           "joint-all_s0, joint-sample_s0" in out
    table, check = out[out.index("| set |"):].split("\n\n", 1)
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ")][1:]
    assert len(rows) == 7  # 4 sets, centroids, random, full
    # the target check below it pairs both joint sets with the single sets of seed 0
    met = next(line for line in check.splitlines() if line.startswith("| **all four met**"))
    assert met.count("of 1 seed") == 2, check
    # every set on the 3 backbones and its mean, every baseline on the 3 backbones ("–" would fail here)
    cells = [c for row in rows[:4] for c in row[2:6]] + [c for row in rows[4:] for c in row[2:5]]
    values = [float(c.strip("*").split(" ±")[0]) for c in cells]
    assert len(values) == 25 and all(0 <= v <= 100 for v in values), rows


def test_joint_table_dry_run_commands_parse(tmp_path, monkeypatch):
    """DRY_RUN=1 prints the script's commands; each one must be accepted by lgm's own CLI."""
    import lgm.cli

    env = os.environ | {"DRY_RUN": "1", "SEEDS": "0 1", "STEPS": "7", "OUT": str(tmp_path / "jt"), "LGM": "lgm"}
    proc = subprocess.run(["bash", str(BENCH / "joint_table.sh")], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]
    assert not (tmp_path / "jt").exists()  # a dry run runs nothing
    parsed = []
    monkeypatch.setattr(lgm.cli, "_run", lambda cmd: parsed.append(cmd) or 0)
    lgm_commands = [c for c in commands if c[0] == "lgm"]
    for argv in lgm_commands:
        assert lgm.cli.main(argv[1:]) == 0, argv
    kinds = [type(c).__name__ for c in parsed]
    assert kinds.count("DistillCommand") == 8 and kinds.count("CrossModelCommand") == 4
    assert kinds.count("BaselineConfig") == 3
    distills = [c for c in parsed if type(c).__name__ == "DistillCommand"]
    for cmd in distills:
        cmd.config.resolved().validate()
        assert cmd.config.steps == 7
    assert sum(1 for c in distills if c.config.joint) == 4
    (summary,) = [c for c in commands if c[0] != "lgm"]
    assert Path(summary[1]).name == "joint_table_summary.py" and Path(summary[1]).is_file()
    assert summary[2] == str(tmp_path / "jt")


def test_step_smoke_prints_lgm_over_floor(tmp_path):
    out = run_script("step.py", "--smoke", "--out", str(tmp_path / "step.json"))
    result = json.loads((tmp_path / "step.json").read_text())
    assert set(result["modes"]) == {"cached", "live"}
    printed = dict(zip(re.findall(r"lgm/floor\s+[\d.]+x \((\w+),", out), numbers(r"lgm/floor\s+([\d.]+)x", out)))
    assert set(printed) == {"cached", "live"}
    for mode, r in result["modes"].items():
        assert len(r["step_s_all"]) == len(r["floor_s_all"]) == 3  # the smoke's steps, alternately timed
        assert r["ratio"] == pytest.approx(r["step_s"] / r["floor_s"])
        assert printed[mode] == pytest.approx(r["ratio"], abs=0.006)
        assert math.isfinite(r["loss"]) and 0 <= r["loss"] <= 2  # a cosine distance
        # The floor is the backbone work of the step alone: lgm's step counts at least its FLOPs.
        assert 0 < r["floor_flops"] <= r["flops"]
    # The live floor adds the real views' forward pass to the synthetic side's work.
    assert result["modes"]["live"]["floor_flops"] > result["modes"]["cached"]["floor_flops"]


def gpu_check_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"]


def test_gpu_check_smoke(tmp_path):
    out = run_script("gpu_check.py", "--smoke", "--out", str(tmp_path / "gc.json"))
    report = json.loads((tmp_path / "gc.json").read_text())
    rows = report["rows"]
    assert report["smoke"] and not report["perturb"]
    assert {r["section"] for r in rows} == {"environment", "correctness", "imagenet100", "live", "evaluation",
                                            "compile", "projection"}
    assert not [r for r in rows if r["status"] in ("FAIL", "error")], [r for r in rows if r["status"] != "info"]
    checks = {(r["section"], r["check"]): r for r in rows}
    verdicts = [r for r in rows if r["status"] == "pass"]
    assert {r["check"] for r in verdicts} == {"portable step = distill_step (CPU)", "chunked = unchunked",
                                              "fp32 1 thread vs all threads (smoke)", "bf16 step gradient vs fp32",
                                              "compile = eager", "probe on the device = on the CPU"}
    step = checks[("imagenet100", "step time")]["data"]["seconds"]
    assert step > 0 and len(checks[("imagenet100", "step time")]["data"]["all"]) == 2
    assert checks[("imagenet100", "lgm/floor")]["data"]["ratio"] == pytest.approx(
        step / checks[("imagenet100", "lgm/floor")]["data"]["floor_s"])
    assert checks[("imagenet100", "largest A without --chunk")]["data"]["largest"] == 8  # the smoke's cap
    assert checks[("live", "live step")]["data"]["streaming"] is True
    assert checks[("live", "images/s vs demand")]["data"]["delivered"] > 0
    assert checks[("evaluation", "probe")]["data"]["seconds"] > 0
    # the steps (at the faster of eager and compiled, never slower than eager) and more
    proj = checks[("projection", "ImageNet-100")]["data"]
    assert proj["seconds"] > proj["parts"]["distill"] > 0 and proj["parts"]["distill"] <= 5000 * step * (1 + 1e-9)
    # The printed table carries the same rows.
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    assert len(table) == len(rows)


def test_gpu_check_catches_a_perturbed_step(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke", "--perturb", "--sections",
                           "correctness,compile,evaluation", "--out", str(tmp_path / "gc.json")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    verdicts = [r for r in gpu_check_rows(tmp_path / "gc.json") if r["status"] in ("pass", "FAIL")]
    assert len(verdicts) == 6
    assert all(r["status"] == "FAIL" for r in verdicts), [(r["check"], r["result"]) for r in verdicts]


def import_gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    return gpu_check


def test_gpu_check_time_guard_stops_a_section_and_the_run_goes_on():
    import time

    gc = import_gpu_check()
    report = gc.Report(deadline=time.monotonic() + 60)
    report.run_section("slow", 0.3, 1, lambda: time.sleep(5))
    report.run_section("next", 5, 0, lambda: report.add("next", "ran", "yes"))
    (stopped,) = [r for r in report.rows if r["section"] == "slow"]
    assert stopped["status"] == "error" and "time guard" in stopped["result"]
    assert report.shared["section_seconds"]["slow"] < 2
    assert [r["check"] for r in report.rows if r["section"] == "next"] == ["ran"]


def test_gpu_check_records_a_failing_check_and_continues():
    import time

    gc = import_gpu_check()
    report = gc.Report(deadline=time.monotonic() + 60)

    def section():
        with report.attempt("s", "broken"):
            raise RuntimeError("boom")
        report.add("s", "after", "ran")

    report.run_section("s", 10, 0, section)
    assert [(r["check"], r["status"]) for r in report.rows] == [("broken", "error"), ("after", "info")]
    assert "boom" in report.rows[0]["result"] and report.failed() == [report.rows[0]]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_check_full_mode_without_cuda_says_so():
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "--smoke" in proc.stderr

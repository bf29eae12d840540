"""`repair push` killed with SIGKILL in every stage, then rerun: it resumes and ends as an uninterrupted run.

Between the kills and the last run, the Hub stand-in fails the adapter's upload: the run reports it in
one line, and the rerun publishes without recomputing anything.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_fixtures import tiny_run_config
from repair.config import STAGES

CLI = Path(__file__).resolve().parents[1] / "cli.py"
POLL_SECONDS = 0.005  # fine enough to catch the silver stage, which can finish in well under a second
STAGE_TIMEOUT = 300  # seconds for one CLI process to reach the stage it is killed in


def _cli_arguments(config, run_dir: Path) -> list[str]:
    """Return `repair push` arguments that reproduce ``config`` and publish to the stand-in."""
    return ["push", config.model, "--bits", str(config.bits), "--method", config.method, "--no-pull",
            "--dataset", config.dataset, "--calibration-samples", str(config.calibration_samples),
            "--calibration-length", str(config.calibration_length), "--train-problems", str(config.train_problems),
            "--test-problems", str(config.test_problems), "--budget", str(config.budget),
            "--epochs", str(config.epochs), "--seed", str(config.seed), "--namespace", "testuser",
            "--name", "kill-resume", "--run-dir", str(run_dir)]


def _finished(run_dir: Path) -> list[str]:
    try:
        return list(json.loads((run_dir / "manifest.json").read_text())["stages"])
    except (OSError, ValueError):
        return []  # not written yet


def _start(arguments: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "REPAIR_NO_PROGRESS": "1"}
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, str(CLI), *arguments], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, env=env)


def _kill_in_stage(arguments: list[str], run_dir: Path, stage: str, log_path: Path) -> bool:
    """Start the CLI, SIGKILL it once ``stage`` has started, and return whether the stage was unfinished then."""
    process = _start(arguments, log_path)
    deadline = time.monotonic() + STAGE_TIMEOUT
    try:
        while not (run_dir / f".tmp-{stage}").exists() and stage not in _finished(run_dir):
            assert process.poll() is None, f"the CLI exited with {process.returncode} before stage {stage}: see {log_path}"
            assert time.monotonic() < deadline, f"stage {stage} did not start within {STAGE_TIMEOUT} s"
            time.sleep(POLL_SECONDS)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    return stage not in _finished(run_dir)


def _run_cli(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLI), *arguments], capture_output=True, text=True,
                          env={**os.environ, "REPAIR_NO_PROGRESS": "1"}, timeout=STAGE_TIMEOUT)


def _without_timings(value):
    """Return ``value`` with every key ending in "seconds" removed, at any depth: timings differ between runs."""
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if not key.endswith("seconds")}
    return value


def _summaries(run_dir: Path) -> dict:
    """Return the manifest's stage summaries without the timings."""
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    return {name: _without_timings(entry["summary"]) for name, entry in stages.items()}


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def test_killed_in_every_stage_resumes(tiny_model_dir, small_gsm8k, tmp_path, hub_api, hub_faults):
    import pyarrow.parquet as pq
    import torch

    from repair.pipeline import Run

    config = tiny_run_config(tiny_model_dir, small_gsm8k, eval_batch_size=8)  # the CLI's default batch
    reference = Run(config, tmp_path / "uninterrupted")
    reference.run("verify")

    # Kill the CLI once in each stage; each rerun resumes and goes on to the next stage.
    run_dir = tmp_path / "killed"
    arguments = _cli_arguments(config, run_dir)
    log_path = tmp_path / "cli.log"
    killed_unfinished = []
    for stage in STAGES:
        if _kill_in_stage(arguments, run_dir, stage, log_path):
            killed_unfinished.append(stage)
        finished = _finished(run_dir)
        assert finished == list(STAGES[:len(finished)]), finished
    # A kill can land just after a stage finished; most must land inside one.
    assert len(killed_unfinished) >= len(STAGES) - 2, killed_unfinished

    # The next rerun finishes the stages, but the Hub keeps failing the adapter's commit.
    adapter = "testuser/kill-resume-repair-lora"
    hub_faults.add_fault(f"^/api/models/{adapter}/commit/main$", 503, method="POST", count=5,
                         headers={"Retry-After": "0"})
    failed = _run_cli(arguments)
    assert failed.returncode == 1, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: upload of {adapter} failed 5 times, last with HTTP 503. Wait a few minutes, "
                      "then rerun the same command; finished stages are kept."]
    assert f"upload of {adapter} failed (HTTP 503); retry 4 of 4 in 0.0 s" in failed.stderr
    assert _finished(run_dir) == list(STAGES)
    assert [commit.title for commit in hub_api.list_repo_commits(adapter)] == ["initial commit"]

    # The last rerun recomputes nothing and publishes.
    final = _run_cli(arguments)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"adapter: {adapter}" in final.stdout
    assert "Stage verify already finished" in final.stderr
    assert [commit.title for commit in hub_api.list_repo_commits(adapter)] == ["Upload adapter from repair",
                                                                                 "initial commit"]
    assert not list(run_dir.glob(".tmp-*"))

    # Same settings, same results as the uninterrupted run
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
    killed_summaries, reference_summaries = _summaries(run_dir), _summaries(reference.root)
    for stage in STAGES:
        if stage == "restore":
            for key in ("records_trained", "optimizer_steps"):
                assert killed_summaries[stage][key] == reference_summaries[stage][key]
            assert killed_summaries[stage]["loss_last"] == pytest.approx(reference_summaries[stage]["loss_last"], abs=1e-4)
        else:
            assert killed_summaries[stage] == reference_summaries[stage], stage
    verified = json.loads((run_dir / "verify.json").read_text())
    expected = json.loads((reference.root / "verify.json").read_text())
    assert verified["held_out_problems"] == expected["held_out_problems"]
    for model in ("reference", "quantized", "repaired"):
        assert verified["models"][model]["nll"] == pytest.approx(expected["models"][model]["nll"], abs=1e-4)
        assert verified["models"][model]["top1_agreement"] == pytest.approx(expected["models"][model]["top1_agreement"],
                                                                            abs=1e-3)
    assert verified["flips"] == expected["flips"]

    # The Silver Bullet records and the weights
    silver = sorted(run_dir.glob("silver/**/*.parquet"))
    assert silver
    for path in silver:
        assert pq.read_table(path).to_pylist() == pq.read_table(reference.root / path.relative_to(run_dir)).to_pylist()
    for folder in ("quantized", "adapter"):
        for path in sorted((run_dir / folder).glob("*.safetensors")):
            killed, uninterrupted = _tensors(path), _tensors(reference.root / folder / path.name)
            assert killed.keys() == uninterrupted.keys()
            for name, tensor in killed.items():
                torch.testing.assert_close(tensor, uninterrupted[name], atol=1e-4, rtol=1e-3, msg=name)

"""Run folders, resuming, and the whole pipeline on the tiny model with publishing to the stand-in."""

import json
from pathlib import Path

import pytest
from huggingface_hub import metadata_load

from model_fixtures import DATA_ROOT, tiny_run_config
from repair.config import PublishConfig
from repair.errors import HubError, RunFolderError
from repair.pipeline import Run
from repair.publish import publish

GENERAL_TEXT = DATA_ROOT / "general" / "tinyshakespeare-120k.txt"


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, small_gsm8k, tmp_path_factory):
    run = Run(tiny_run_config(tiny_model_dir, small_gsm8k), tmp_path_factory.mktemp("runs") / "tiny")
    run.run("verify")
    return run


def test_all_stages_recorded(finished_run):
    stages = finished_run.manifest["stages"]
    assert list(stages) == ["prepare", "quantize", "measure", "locate", "silver", "restore", "verify"]
    assert stages["prepare"]["summary"]["data"]["train_pool"] == 12
    located = stages["locate"]["summary"]["problems_with_frontier"]
    assert located > 0
    assert stages["silver"]["summary"]["records"] == min(8, located)
    verify = json.loads((finished_run.root / "verify.json").read_text())
    assert verify["models"]["reference"]["problems"] == 6
    assert len(verify["held_out_problems"]) == 6
    # The tiny random model solves nothing, so only the full-precision model is generated.
    assert verify["generated"]["problems"] == 6
    assert verify["generated"]["reference"]["flexible"] == 0.0
    assert "below 20%" in verify["generated"]["skipped"]
    assert "quantized" not in verify["generated"]
    assert not list(finished_run.root.glob(".tmp-*"))


def test_held_out_never_in_silver(finished_run):
    from repair.silver import load_records

    held_out = set(json.loads((finished_run.root / "verify.json").read_text())["held_out_problems"])
    assert not held_out & {r.problem_id for r in load_records(finished_run.silver_dir)}


def test_rerun_recomputes_nothing(finished_run, monkeypatch):
    import repair.pipeline as pipeline

    def fail(*args):
        raise AssertionError("a finished stage ran again")

    for name in ("_prepare", "_quantize", "_measure", "_locate", "_silver", "_restore", "_verify"):
        monkeypatch.setattr(pipeline, name, fail)
    Run(finished_run.config, finished_run.root).run("verify")


def test_busy_folder_rejected(finished_run):
    second = Run(finished_run.config, finished_run.root)
    with finished_run.locked():
        with pytest.raises(RunFolderError, match="in use by another repair process"):
            second.run("verify")
    # The lock is released when the block ends, so the same call now succeeds.
    assert set(second.run("verify")) == {"prepare", "quantize", "measure", "locate", "silver", "restore", "verify"}


def test_other_settings_rejected(finished_run):
    from dataclasses import replace

    with pytest.raises(RunFolderError, match="other settings \\(bits differ\\)"):
        Run(replace(finished_run.config, bits=8), finished_run.root)


def test_failed_stage_leaves_no_partial_output(tiny_model_dir, small_gsm8k, tmp_path, monkeypatch):
    import repair.pipeline as pipeline

    def broken_quantize(run, tmp):
        (tmp / "quantized").mkdir()
        (tmp / "quantized" / "half.safetensors").write_bytes(b"x")
        raise KeyboardInterrupt

    run = Run(tiny_run_config(tiny_model_dir, small_gsm8k), tmp_path / "run")
    monkeypatch.setattr(pipeline, "_quantize", broken_quantize)
    with pytest.raises(KeyboardInterrupt):
        run.run("quantize")
    assert run.is_done("prepare")
    assert not run.is_done("quantize")
    assert not (run.root / "quantized").exists()
    assert not list(run.root.glob(".tmp-*"))


def test_publish_to_stand_in(finished_run, hub_api, tmp_path):
    result = publish(finished_run, PublishConfig(namespace="testorg", name_prefix="tiny-repair", token="hf_test_write"),
                     command="repair push tiny --bits 4")
    assert result["repos"]["adapter"] == "testorg/tiny-repair-repair-lora"

    from huggingface_hub import hf_hub_download

    quantized = metadata_load(hf_hub_download("testorg/tiny-repair", "README.md", token="hf_test_write"))
    adapter = metadata_load(hf_hub_download("testorg/tiny-repair-repair-lora", "README.md", token="hf_test_write"))
    dataset = metadata_load(hf_hub_download("testorg/tiny-repair-silver-bullet", "README.md", repo_type="dataset",
                                            token="hf_test_write"))
    assert quantized["base_model"] == "testorg/tiny-llama"
    assert quantized["base_model_relation"] == "quantized"
    assert quantized["license"] == "apache-2.0"
    assert adapter["base_model"] == "testorg/tiny-repair"
    assert adapter["base_model_relation"] == "adapter"
    assert "testorg/tiny-repair-silver-bullet" in adapter["datasets"]
    configs = {entry["config_name"]: entry for entry in dataset["configs"]}
    assert configs["sft"]["data_files"][0]["path"] == "sft/train-00000-of-00001.parquet"
    assert configs["sft"]["default"] is True
    assert configs["dpo"]["data_files"][0]["path"] == "dpo/train-00000-of-00001.parquet"
    config = json.loads(open(hf_hub_download("testorg/tiny-repair-repair-lora", "adapter_config.json",
                                             token="hf_test_write")).read())
    assert config["base_model_name_or_path"] == "testorg/tiny-repair"

    from datasets import load_dataset

    rows = load_dataset("testorg/tiny-repair-silver-bullet", split="train", token="hf_test_write")
    assert len(rows) == finished_run.stage_summary("silver")["records"]
    assert {"prompt", "completion", "problem_id", "step_index", "source"} <= set(rows.column_names)
    pairs = load_dataset("testorg/tiny-repair-silver-bullet", "dpo", split="train", token="hf_test_write")
    assert {"prompt", "chosen", "rejected"} <= set(pairs.column_names)
    assert all(pair["chosen"].strip() != pair["rejected"].strip() for pair in pairs)


def test_read_only_token_publishes_nothing(finished_run, hub_api):
    with pytest.raises(HubError, match="read-only"):
        publish(finished_run, PublishConfig(namespace="testuser", name_prefix="never", token="hf_test_read"),
                command="repair push")
    assert not hub_api.repo_exists("testuser/never")


def test_foreign_namespace_publishes_nothing(finished_run, hub_api):
    with pytest.raises(HubError, match="cannot write to namespace otheruser"):
        publish(finished_run, PublishConfig(namespace="otheruser", name_prefix="never", token="hf_test_write"),
                command="repair push")
    assert not hub_api.repo_exists("otheruser/never", token="hf_other_write")


def test_baseline_run_with_control(tiny_model_dir, small_gsm8k, tmp_path, monkeypatch):
    import repair.pipeline as pipeline

    monkeypatch.setattr(pipeline, "MIN_MEANINGFUL_ACCURACY", 0.0)  # generate all three models
    config = tiny_run_config(tiny_model_dir, small_gsm8k, selection="random", objective="sft+dpo", control=True,
                             general_text=str(GENERAL_TEXT), seed=3)
    run = Run(config, tmp_path / "baseline")
    run.run("verify")

    silver = run.stage_summary("silver")
    assert silver["selection"] == "random"
    assert silver["records"] == 8
    from repair.silver import load_records

    records = load_records(run.silver_dir)
    assert {r.source for r in records} == {"random"}
    assert all(r.rejected.strip() for r in records)  # generated for DPO in the silver stage
    trained = run.stage_summary("restore")
    assert trained["objective"] == "sft+dpo"
    assert trained["control"]["base"] == "reference"
    assert (run.root / "control-adapter" / "adapter_model.safetensors").is_file()

    verify = json.loads((run.root / "verify.json").read_text())
    assert verify["models"]["control"]["problems"] == 6
    assert verify["nll_drop"]["control"] == pytest.approx(
        verify["models"]["reference"]["nll"] - verify["models"]["control"]["nll"], abs=1e-3)
    generated = verify["generated"]
    assert set(generated) >= {"reference", "quantized", "repaired"}
    assert 0.0 <= generated["repaired"]["strict"] <= generated["repaired"]["flexible"] <= 1.0
    general = verify["general_text"]
    assert set(general) >= {"reference", "quantized", "repaired", "control"}
    assert general["reference"]["tokens"] == general["repaired"]["tokens"] > 1000
    assert general["reference"]["nll"] != general["quantized"]["nll"]


def test_fork_reuses_stages_and_merges(finished_run, tmp_path, monkeypatch):
    from dataclasses import replace

    import repair.pipeline as pipeline

    def fail(*args):
        raise AssertionError("a shared stage ran again")

    for name in ("_prepare", "_quantize", "_measure", "_locate"):
        monkeypatch.setattr(pipeline, name, fail)
    forked = finished_run.fork(replace(finished_run.config, merge=True, seed=5, budget=4), tmp_path / "fork")
    forked.run("verify")

    assert forked.stage_summary("silver")["records"] <= 4
    merged = json.loads((forked.root / "verify.json").read_text())["merged"]
    assert merged["problems"] == 6
    assert merged["nll"] > 0
    assert merged["checkpoint_bytes"] > 0
    assert (forked.root / "merged" / "recipe.yaml").is_file()
    assert not (forked.root / ".merged-dense").exists()

    result = publish(forked, PublishConfig(namespace="testuser", name_prefix="forked", push=False, output=tmp_path / "out"),
                     command="repair push tiny --bits 2 --merge")
    assert result["repos"]["merged"] == "testuser/forked-repaired"
    card = metadata_load(tmp_path / "out" / "forked-repaired" / "README.md")
    assert card["base_model_relation"] == "quantized"
    assert "merged-lora" in card["tags"]
    saved = json.loads((tmp_path / "out" / "forked-repaired" / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "compressed-tensors"
    assert f"| {merged['nll']} |" in (tmp_path / "out" / "forked-repaired" / "README.md").read_text()


def test_fork_rejects_other_quantization(finished_run, tmp_path):
    from dataclasses import replace

    with pytest.raises(RunFolderError, match="bits differ before the silver stage"):
        finished_run.fork(replace(finished_run.config, bits=4), tmp_path / "fork")
    with pytest.raises(RunFolderError, match="--budget 99"):
        finished_run.fork(replace(finished_run.config, budget=99), tmp_path / "fork2")


def test_older_folder_without_new_setting_resumes(finished_run):
    config_file = finished_run.root / "config.json"
    saved = json.loads(config_file.read_text())
    older = {k: v for k, v in saved.items() if k not in ("generated_problems", "ignore")}
    config_file.write_text(json.dumps(older))
    try:
        assert Run(finished_run.config, finished_run.root).is_done("verify")
    finally:
        config_file.write_text(json.dumps(saved))

"""Pulling an existing quantized checkpoint from the Hub's model tree instead of quantizing."""

import json

import pytest

from model_fixtures import gsm8k_rows, tiny_run_config
from repair.config import PublishConfig
from repair.pipeline import Run
from repair.publish import publish
from repair.sources import find_quantized
from repair.steps import Problem, split_gsm8k_solution

# A base of its own, so that repos other tests publish for the tiny model are not candidates here.
BASE = "testorg/tiny-llama-pull"


def _card(tags):
    return f"---\nbase_model: {BASE}\nbase_model_relation: quantized\ntags: {json.dumps(tags)}\n---\n# q\n"


@pytest.fixture(scope="module")
def pull_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a card that names BASE as its Hub id."""
    import shutil

    folder = tmp_path_factory.mktemp("pull-base") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "README.md").write_text(f"---\nlicense: apache-2.0\nbase_model: {BASE}\n---\n# tiny\n")
    return folder


@pytest.fixture(scope="module")
def hub_children(pull_model_dir, hub_api, tmp_path_factory):
    """Three quantized children of BASE on the stand-in: usable, wrong bits, unloadable format."""
    from repair.quantize import quantize

    tiny_model_dir = pull_model_dir
    root = tmp_path_factory.mktemp("children")
    problems = []
    for index, row in enumerate(gsm8k_rows("train", 4)):
        steps, answer = split_gsm8k_solution(row["answer"])
        problems.append(Problem(id=str(index), question=row["question"], steps=steps, answer=answer))

    packed = root / "packed"
    packed.mkdir()
    config = json.loads((tiny_model_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 2, "group_size": 64}
    (packed / "config.json").write_text(json.dumps(config))
    (packed / "README.md").write_text(_card(["gptq"]))
    eight = root / "eight"
    quantize(tiny_model_dir, eight, "gptq", 8, None, problems, 64)
    (eight / "README.md").write_text(_card(["gptq"]))
    good = root / "good"
    quantize(tiny_model_dir, good, "gptq", 2, None, problems, 64)
    (good / "README.md").write_text(_card(["gptq"]))

    for name, folder in (("tiny-gptq-packed", packed), ("tiny-gptq-w8", eight), ("tiny-gptq-w2", good)):
        hub_api.create_repo(f"testorg/{name}", exist_ok=True)
        hub_api.upload_folder(repo_id=f"testorg/{name}", folder_path=folder)
    return root


def test_matching_checkpoint_found(hub_children):
    found, candidates = find_quantized(BASE, "gptq", 2, token="hf_test_write")
    assert found is not None
    assert found.repo_id == "testorg/tiny-gptq-w2"
    reasons = {c.repo_id: c.reason for c in candidates}
    assert "packed format needs the gptqmodel backend" in reasons["testorg/tiny-gptq-packed"]
    assert reasons["testorg/tiny-gptq-w8"] == "8-bit, not 2-bit"


def test_other_method_not_matched(hub_children):
    found, candidates = find_quantized(BASE, "awq", 2, token="hf_test_write")
    assert found is None
    assert any(c.reason == "made with gptq, not awq" for c in candidates)


def test_run_pulls_and_links_adapter(hub_children, pull_model_dir, small_gsm8k, tmp_path):
    run = Run(tiny_run_config(pull_model_dir, small_gsm8k, pull=True), tmp_path / "run", token="hf_test_write")
    run.run("verify")
    quantized = run.stage_summary("quantize")
    assert quantized["pulled_from"] == "testorg/tiny-gptq-w2"
    assert quantized["reason"].startswith("found on the Hub")

    result = publish(run, PublishConfig(namespace="testuser", name_prefix="pulled", push=False, output=tmp_path / "out",
                                        token="hf_test_write"), command="repair push")
    assert result["repos"]["quantized"] == "testorg/tiny-gptq-w2"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pulled-repair-lora", "pulled-silver-bullet"]
    adapter_config = json.loads((tmp_path / "out" / "pulled-repair-lora" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "testorg/tiny-gptq-w2"


def test_no_pull_quantizes(hub_children, pull_model_dir, small_gsm8k, tmp_path):
    run = Run(tiny_run_config(pull_model_dir, small_gsm8k, pull=False), tmp_path / "run", token="hf_test_write")
    run.run("quantize")
    assert run.stage_summary("quantize")["pulled_from"] is None

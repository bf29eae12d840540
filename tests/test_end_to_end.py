"""`repair push` on the real built-in model against the Hub stand-in, then the repos read back."""

import json

import pytest
from click.testing import CliRunner

from model_fixtures import gsm8k_rows, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    from cli import cli

    folder = tmp_path_factory.mktemp("e2e")
    data = folder / "gsm8k"
    write_jsonl(data / "train.jsonl", gsm8k_rows("train", 40))
    write_jsonl(data / "test.jsonl", gsm8k_rows("test", 8))
    args = ["push", "smollm2-135m", "--bits", "3", "--dataset", str(data), "--train-problems", "24",
            "--test-problems", "8", "--calibration-samples", "8", "--budget", "16", "--namespace", "testuser",
            "--name", "smol-e2e", "--run-dir", str(folder / "run"), "--output", str(folder / "out")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return folder, data, result


def test_summary_printed(pushed):
    _, _, result = pushed
    assert "repaired" in result.stdout
    assert "gap closed:" in result.stdout
    assert "adapter: testuser/smol-e2e-repair-lora" in result.stdout


def test_quantized_worse_and_repair_helps(pushed):
    folder, _, _ = pushed
    verify = json.loads((folder / "run" / "verify.json").read_text())
    models = verify["models"]
    assert models["quantized"]["nll"] > models["reference"]["nll"]
    assert models["repaired"]["nll"] < models["quantized"]["nll"]
    assert verify["gap_closed"] > 0


def test_downloaded_adapter_reproduces_card(pushed, tmp_path):
    from huggingface_hub import metadata_load, snapshot_download

    from repair.data import load_split
    from repair.measure import score_traces, summarize
    from repair.restore import load_repaired
    from repair.sources import load_tokenizer

    _, data, _ = pushed
    cache = tmp_path / "empty-cache"
    quantized = snapshot_download("testuser/smol-e2e", cache_dir=cache)
    adapter = snapshot_download("testuser/smol-e2e-repair-lora", cache_dir=cache)
    dataset = snapshot_download("testuser/smol-e2e-silver-bullet", repo_type="dataset", cache_dir=cache)

    card = metadata_load(f"{adapter}/README.md")
    assert card["base_model"] == "testuser/smol-e2e"
    assert metadata_load(f"{quantized}/README.md")["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert metadata_load(f"{dataset}/README.md")["annotations_creators"] == ["machine-generated"]
    metrics = card["model-index"][0]["results"][0]["metrics"]
    card_nll = next(m["value"] for m in metrics if m["type"] == "nll")

    model = load_repaired(quantized, adapter)
    tokenizer = load_tokenizer(adapter)
    problems = load_split(str(data), "test", limit=8).problems
    figures = summarize(score_traces(model, tokenizer, problems))
    assert figures["nll"] == pytest.approx(card_nll, abs=2e-4)


def test_token_never_written(pushed):
    import os

    folder, _, result = pushed
    token = os.environ["HF_TOKEN"].encode()
    assert token not in result.stdout_bytes
    assert token not in result.stderr_bytes
    for path in folder.rglob("*"):
        if path.is_file():
            assert token not in path.read_bytes(), path


def test_stdout_holds_only_the_summary(pushed):
    _, _, result = pushed
    assert "'loss'" not in result.stdout
    assert result.stdout.splitlines()[0].startswith("model")

"""Bad input through the CLI: one `Error:` line naming the problem and the fix, a non-zero exit, nothing published."""

import re

import pytest
from click.testing import CliRunner

from cli import cli
from model_fixtures import gsm8k_rows, write_jsonl


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, hub_api, tiny_model_dir):
    """Files and Hub repos that the cases below point at."""
    root = tmp_path_factory.mktemp("bad-input")
    write_jsonl(root / "noanswers" / "train.jsonl", [{"question": "What is 2 + 2?"}])
    write_jsonl(root / "noanswers" / "test.jsonl", [{"question": "What is 3 + 3?"}])
    write_jsonl(root / "empty" / "train.jsonl", [])
    write_jsonl(root / "empty" / "test.jsonl", [])
    write_jsonl(root / "trainonly" / "train.jsonl", gsm8k_rows("train", 3))
    write_jsonl(root / "good" / "train.jsonl", gsm8k_rows("train", 20))
    write_jsonl(root / "good" / "test.jsonl", gsm8k_rows("test", 4))
    (root / "noconfig").mkdir()
    (root / "t5").mkdir()
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64).save_pretrained(root / "t5")
    pickle_only = root / "pickle"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (pickle_only / "pytorch_model.bin").write_bytes(b"never loaded")
    hub_api.create_repo("testuser/bad-pickle", exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/bad-pickle", folder_path=pickle_only)
    hub_api.create_repo("testuser/bad-private", private=True, exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/bad-private", folder_path=tiny_model_dir)
    return root


GOOD = "{root}/good"
# (case id, arguments after `repair`, exit code, pattern of the Error line)
CASES = [
    ("bits-5", ["push", "smollm2-135m", "--bits", "5"], 2, r"--bits 5 is not supported\. Use one of 2, 3, 4, 8"),
    ("bits-0", ["push", "smollm2-135m", "--bits", "0"], 2, r"--bits 0 is not supported"),
    ("method-unknown", ["push", "smollm2-135m", "--bits", "4", "--method", "int4"], 2, r"Invalid value for '--method'"),
    ("smoothquant-4bit", ["push", "smollm2-135m", "--bits", "4", "--method", "smoothquant"], 2,
     r"smoothquant quantizes weights and activations to 8 bits, not 4\. Use --bits 8"),
    ("smoothquant-group", ["push", "smollm2-135m", "--bits", "8", "--method", "smoothquant", "--group-size", "64"], 2,
     r"--group-size does not apply to smoothquant"),
    ("group-size-0", ["push", "smollm2-135m", "--bits", "4", "--group-size", "0"], 2, r"--group-size 0 is invalid"),
    ("budget-0", ["push", "smollm2-135m", "--bits", "4", "--budget", "0"], 2, r"--budget must be positive, got 0"),
    ("epochs-0", ["push", "smollm2-135m", "--bits", "4", "--epochs", "0"], 2, r"--epochs and --learning-rate must be positive"),
    ("no-push-no-output", ["push", "smollm2-135m", "--bits", "4", "--no-push"], 2, r"--no-push needs --output"),
    ("bad-repo-name", ["push", "smollm2-135m", "--bits", "4", "--name", "bad name!"], 2, r"--name 'bad name!' is not a valid Hub repo name"),
    ("bad-namespace", ["push", "smollm2-135m", "--bits", "4", "--namespace", "-x-"], 2, r"--namespace '-x-' is not a valid"),
    ("read-only-token", ["push", "smollm2-135m", "--bits", "4", "--token", "hf_test_read"], 1,
     r"the Hub token is read-only\. Create a token with write access"),
    ("invalid-token", ["push", "smollm2-135m", "--bits", "4", "--token", "hf_invalid"], 1,
     r"the Hub token is invalid or expired"),
    ("foreign-namespace", ["push", "smollm2-135m", "--bits", "4", "--namespace", "otheruser"], 1,
     r"cannot write to namespace otheruser\. Pass --namespace with one of: testorg, testuser"),
    ("unknown-alias", ["push", "smollm9-1b", "--bits", "4", "--dataset", GOOD], 1, r"unknown model alias 'smollm9-1b'"),
    ("missing-path", ["push", "./no/such/model", "--bits", "4", "--dataset", GOOD], 1, r"model path \./no/such/model not found"),
    ("missing-gguf", ["push", "missing.gguf", "--bits", "4", "--dataset", GOOD], 1, r"GGUF file missing\.gguf not found"),
    ("folder-without-config", ["push", "{root}/noconfig", "--bits", "4", "--dataset", GOOD], 1, r"has no config\.json"),
    ("not-causal-lm", ["push", "{root}/t5", "--bits", "4", "--dataset", GOOD], 1, r"is a 't5' model, not a causal language model"),
    ("unknown-hub-model", ["push", "testuser/no-such-model", "--bits", "4", "--dataset", GOOD], 1,
     r"model testuser/no-such-model not found on the Hub"),
    ("private-model-other-token", ["push", "testuser/bad-private", "--bits", "4", "--dataset", GOOD, "--token",
                                   "hf_other_write"], 1, r"model testuser/bad-private not found on the Hub"),
    ("pickle-only-model", ["push", "testuser/bad-pickle", "--bits", "4", "--dataset", GOOD], 1,
     r"has no safetensors weights\. Pick a repo that ships \.safetensors files"),
    ("dataset-without-answers", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/noanswers"], 1,
     r"has no usable problems \(1 no answer\)"),
    ("empty-dataset", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/empty"], 1, r"has no usable problems \(no rows\)"),
    ("dataset-without-test-split", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/trainonly"], 1,
     r"has no test split\. Add test\.jsonl"),
    ("unknown-local-dataset", ["push", "smollm2-135m", "--bits", "4", "--dataset", "nowhere"], 1, r"dataset nowhere not found"),
    ("unknown-hub-dataset", ["push", "smollm2-135m", "--bits", "4", "--dataset", "testuser/no-such-data"], 1,
     r"dataset testuser/no-such-data not found on the Hub"),
    ("quantize-bits-5", ["quantize", "smollm2-135m", "--bits", "5", "--output", "{root}/q"], 2, r"--bits 5 is not supported"),
]


@pytest.mark.parametrize(("arguments", "code", "pattern"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_one_line(inputs, hub_api, tmp_path, arguments, code, pattern):
    arguments = [arg.format(root=inputs) for arg in arguments]
    if arguments[0] == "push" and "--name" not in arguments:
        arguments += ["--name", "never-published"]
    result = CliRunner().invoke(cli, [*arguments, "--run-dir", str(tmp_path / "run")], catch_exceptions=False)

    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert "Traceback" not in result.stderr
    for namespace in ("testuser", "otheruser"):
        assert not hub_api.repo_exists(f"{namespace}/never-published", token="hf_other_write" if namespace == "otheruser" else None)


def test_run_folder_of_other_settings(inputs, tmp_path):
    run_dir = tmp_path / "run"
    base = ["diagnose", "smollm2-135m", "--dataset", str(inputs / "noanswers"), "--run-dir", str(run_dir)]
    CliRunner().invoke(cli, [*base, "--bits", "4"])
    result = CliRunner().invoke(cli, [*base, "--bits", "3"])
    assert result.exit_code == 1
    assert "was made with other settings (bits differ). Rerun with the same settings, or pass a new --run-dir" in result.stderr

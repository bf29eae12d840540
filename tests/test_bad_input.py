"""Bad input through the CLI and the web app's job handler.

Each case must end the same way in both: one line naming the problem and the fix (`Error: ...` on
the CLI's stderr with a non-zero exit, the message of a ``gr.Error`` in the app), and no repo
created or committed to on the Hub stand-in.
"""

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from model_fixtures import gsm8k_rows, tiny_run_config, write_jsonl

# Far beyond any machine's memory: about 405B parameters, 3.2 TB as float32 held twice.
HUGE_LLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=16384, intermediate_size=53248,
                  num_hidden_layers=126, num_attention_heads=128, num_key_value_heads=8, vocab_size=128256,
                  max_position_embeddings=4096)


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
    unparseable = [{"question": "What is 2 + 2?", "answer": "It is four."}, {"question": "And 3 + 3?", "answer": "6"}]
    write_jsonl(root / "unparseable" / "train.jsonl", unparseable)
    write_jsonl(root / "unparseable" / "test.jsonl", unparseable)
    for split in ("train", "test"):
        (root / "malformed" / f"{split}.jsonl").parent.mkdir(parents=True, exist_ok=True)
        (root / "malformed" / f"{split}.jsonl").write_text('{"question": "2 + 2?", "answer": \n[1, 2]\nnot json\n')
    (root / "noconfig").mkdir()
    (root / "t5").mkdir()
    from transformers import T5Config

    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=64).save_pretrained(root / "t5")
    tiny_config = json.loads((tiny_model_dir / "config.json").read_text())

    # Weights only as pickle, locally and on the Hub
    pickle_only = root / "pickle"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text(json.dumps(tiny_config))
    (pickle_only / "pytorch_model.bin").write_bytes(b"never loaded")
    hub_api.create_repo("testuser/bad-pickle", exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/bad-pickle", folder_path=pickle_only)

    # Private and gated copies of the tiny model
    hub_api.create_repo("testuser/bad-private", private=True, exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/bad-private", folder_path=tiny_model_dir)
    hub_api.create_repo("testuser/bad-gated", exist_ok=True)
    hub_api.upload_folder(repo_id="testuser/bad-gated", folder_path=tiny_model_dir)
    hub_api.update_repo_settings("testuser/bad-gated", gated="auto")

    # Code shipped with the model: importing it would leave a marker file
    remote = root / "remote-code"
    remote.mkdir()
    auto_map = {"AutoConfig": "modeling_marker.MarkerConfig", "AutoModelForCausalLM": "modeling_marker.MarkerModel"}
    (remote / "config.json").write_text(json.dumps({**tiny_config, "auto_map": auto_map}))
    (remote / "modeling_marker.py").write_text(f"open({str(root / 'remote-code-ran')!r}, 'w').close()\n")

    # A config far too large for memory, without weights: it must be refused before any loading
    (root / "huge").mkdir()
    (root / "huge" / "config.json").write_text(json.dumps(HUGE_LLAMA))
    return root


@dataclass
class Case:
    """One bad input: the CLI arguments after `repair`, the exit code and a pattern of the message.

    ``ui_pattern`` replaces ``pattern`` for the app where Click rejects the value before the library
    does. ``disk`` names a disk fault installed for the case ("read-only", "full" or "full in stage"). With ``token``
    False, HF_TOKEN is unset.
    """

    id: str
    cli: list[str]
    code: int
    pattern: str
    ui_pattern: str | None = None
    disk: str | None = None
    token: bool = True


GOOD = "{root}/good"
TINY = "{tiny}"
CASES = [
    # Options that cannot work, alone or together
    Case("bits-5", ["push", "smollm2-135m", "--bits", "5"], 2, r"--bits 5 is not supported\. Use one of 2, 3, 4, 8"),
    Case("bits-0", ["push", "smollm2-135m", "--bits", "0"], 2, r"--bits 0 is not supported"),
    Case("method-unknown", ["push", "smollm2-135m", "--bits", "4", "--method", "int4"], 2,
         r"Invalid value for '--method'", ui_pattern=r"--method 'int4' is not supported\. Use one of gptq, awq"),
    Case("smoothquant-4bit", ["push", "smollm2-135m", "--bits", "4", "--method", "smoothquant"], 2,
         r"smoothquant quantizes weights and activations to 8 bits, not 4\. Use --bits 8"),
    Case("smoothquant-group", ["push", "smollm2-135m", "--bits", "8", "--method", "smoothquant", "--group-size", "64"],
         2, r"--group-size does not apply to smoothquant"),
    Case("group-size-0", ["push", "smollm2-135m", "--bits", "4", "--group-size", "0"], 2, r"--group-size 0 is invalid"),
    Case("group-size-not-dividing", ["push", TINY, "--bits", "4", "--group-size", "48", "--no-pull", "--dataset", GOOD],
         2, r"--group-size 48 does not divide the layer widths .*\. "),
    Case("budget-0", ["push", "smollm2-135m", "--bits", "4", "--budget", "0"], 2, r"--budget must be positive, got 0"),
    Case("epochs-0", ["push", "smollm2-135m", "--bits", "4", "--epochs", "0"], 2,
         r"--epochs and --learning-rate must be positive"),
    Case("no-push-no-output", ["push", "smollm2-135m", "--bits", "4", "--no-push"], 2, r"--no-push needs --output"),
    # Repo names and namespaces the Hub would reject
    Case("bad-repo-name", ["push", "smollm2-135m", "--bits", "4", "--name", "bad name!"], 2,
         r"--name 'bad name!' is not a valid Hub repo name"),
    Case("repo-name-double-dash", ["push", "smollm2-135m", "--bits", "4", "--name", "a--b"], 2,
         r"--name 'a--b' is not a valid Hub repo name\. Use at most 96"),
    Case("repo-name-too-long", ["push", "smollm2-135m", "--bits", "4", "--name", "x" * 97], 2,
         r"--name 'x{97}' is not a valid Hub repo name"),
    Case("bad-namespace", ["push", "smollm2-135m", "--bits", "4", "--namespace", "-x-"], 2,
         r"--namespace '-x-' is not a valid"),
    # Tokens
    Case("read-only-token", ["push", "smollm2-135m", "--bits", "4", "--token", "hf_test_read"], 1,
         r"the Hub token is read-only\. Create a token with write access"),
    Case("invalid-token", ["push", "smollm2-135m", "--bits", "4", "--token", "hf_invalid"], 1,
         r"the Hub token is invalid or expired"),
    Case("foreign-namespace", ["push", "smollm2-135m", "--bits", "4", "--namespace", "otheruser"], 1,
         r"cannot write to namespace otheruser\. Pass --namespace with one of: testorg, testuser"),
    # Models
    Case("unknown-alias", ["push", "smollm9-1b", "--bits", "4", "--dataset", GOOD], 1, r"unknown model alias 'smollm9-1b'"),
    Case("missing-path", ["push", "./no/such/model", "--bits", "4", "--dataset", GOOD], 1,
         r"model path \./no/such/model not found"),
    Case("missing-gguf", ["push", "missing.gguf", "--bits", "4", "--dataset", GOOD], 1, r"GGUF file missing\.gguf not found"),
    Case("folder-without-config", ["push", "{root}/noconfig", "--bits", "4", "--dataset", GOOD], 1, r"has no config\.json"),
    Case("not-causal-lm", ["push", "{root}/t5", "--bits", "4", "--dataset", GOOD], 1,
         r"is a 't5' model, not a causal language model\. Pick a decoder-only"),
    Case("quantized-bad-repo-id", ["push", "smollm2-135m", "--bits", "4", "--quantized", "../../etc/passwd"], 2,
         r"--quantized '\.\./\.\./etc/passwd' is not a valid Hub repo id\. Give the id"),
    Case("model-id-with-spaces", ["push", "org/na me", "--bits", "4", "--dataset", GOOD], 1,
         r"model path org/na me not found\. Check the path, or give a Hub id"),
    Case("unknown-hub-model", ["push", "testuser/no-such-model", "--bits", "4", "--dataset", GOOD], 1,
         r"model testuser/no-such-model not found on the Hub"),
    Case("private-model-other-token", ["push", "testuser/bad-private", "--bits", "4", "--dataset", GOOD, "--token",
                                       "hf_other_write"], 1, r"model testuser/bad-private not found on the Hub"),
    Case("private-model-no-token", ["push", "testuser/bad-private", "--bits", "4", "--dataset", GOOD, "--no-push",
                                    "--output", "{root}/out"], 1,
         r"model testuser/bad-private not found on the Hub\. Check the id; for a private model pass a token",
         token=False),
    Case("gated-model-other-token", ["push", "testuser/bad-gated", "--bits", "4", "--dataset", GOOD, "--token",
                                     "hf_other_write"], 1,
         r"model testuser/bad-gated is gated and this token has no access\. Accept its terms"),
    Case("pickle-only-hub-model", ["push", "testuser/bad-pickle", "--bits", "4", "--dataset", GOOD], 1,
         r"has no safetensors weights, only pickle files \(pytorch_model\.bin\).*\. Pick a repo that ships "
         r"\.safetensors files, or pass --allow-pickle"),
    Case("pickle-only-folder", ["push", "{root}/pickle", "--bits", "4", "--dataset", GOOD], 1,
         r"only pickle files \(pytorch_model\.bin\).*pass --allow-pickle"),
    Case("remote-code", ["push", "{root}/remote-code", "--bits", "4", "--dataset", GOOD], 1,
         r"ships its own Python code \(auto_map in config\.json\).*\. Read the code first, then pass --trust-remote-code"),
    Case("model-too-large", ["push", "{root}/huge", "--bits", "4", "--dataset", GOOD], 1,
         r"needs about \d+\.\d GB of memory \(40\d\.\d\dB parameters in float32, 2 copies while quantizing\), "
         r"but only \d+\.\d GB is available\. .*--skip-memory-check"),
    # Datasets
    Case("dataset-without-answers", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/noanswers"], 1,
         r"has no usable problems \(1 no answer\)\. Each row needs a question"),
    Case("empty-dataset", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/empty"], 1,
         r"has no usable problems \(no rows\)"),
    Case("unparseable-answers", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/unparseable"], 1,
         r"has no usable problems \(2 solution without steps or '#### answer'\)"),
    Case("malformed-json-lines", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/malformed"], 1,
         r"has no usable problems \(2 malformed JSON line, 1 line is not a JSON object\)"),
    Case("dataset-without-test-split", ["push", "smollm2-135m", "--bits", "4", "--dataset", "{root}/trainonly"], 1,
         r"has no test split\. Add test\.jsonl"),
    Case("unknown-local-dataset", ["push", "smollm2-135m", "--bits", "4", "--dataset", "nowhere"], 1,
         r"dataset nowhere not found"),
    Case("dataset-path-outside-hub-ids", ["push", "smollm2-135m", "--bits", "4", "--dataset", "a/b/../../etc"], 1,
         r"dataset a/b/\.\./\.\./etc is neither a local file or folder nor a valid Hub dataset id\. Check the path"),
    Case("unknown-hub-dataset", ["push", "smollm2-135m", "--bits", "4", "--dataset", "testuser/no-such-data"], 1,
         r"dataset testuser/no-such-data not found on the Hub"),
    # Disks
    Case("read-only-run-disk", ["push", "smollm2-135m", "--bits", "4", "--dataset", GOOD], 1,
         r"cannot create run folder .*: Read-only file system\. Pass --run-dir with a writable folder", disk="read-only"),
    Case("full-run-disk", ["push", "smollm2-135m", "--bits", "4", "--dataset", GOOD], 1,
         r"cannot write .*config\.json: No space left on device\. Free disk space", disk="full"),
    Case("full-disk-in-stage", ["push", "smollm2-135m", "--bits", "4", "--dataset", GOOD], 1,
         r"the disk of .* is full during stage prepare\. Free disk space, then rerun the same command to resume",
         disk="full in stage"),
    Case("quantize-bits-5", ["quantize", "smollm2-135m", "--bits", "5", "--output", "{root}/q"], 2,
         r"--bits 5 is not supported"),
]
CASE_IDS = [case.id for case in CASES]

# CLI options that the app's form or its run_defaults cover, by RunConfig or form field
FORM_OPTIONS = {"--bits": "bits", "--method": "method", "--dataset": "dataset", "--budget": "budget",
                "--selection": "selection", "--objective": "objective", "--namespace": "namespace",
                "--token": "token_text"}
RUN_DEFAULT_OPTIONS = {"--group-size": ("group_size", int), "--epochs": ("epochs", float)}
RUN_DEFAULT_FLAGS = {"--no-pull": ("pull", False)}


def _arguments(case: Case, inputs: Path, tiny: Path) -> list[str]:
    return [arg.format(root=inputs, tiny=tiny) for arg in case.cli]


def _install_disk_fault(monkeypatch, kind: str | None, under: Path) -> None:
    """Make creating (read-only) or writing (full) files under ``under`` fail as the OS would.

    "full in stage" fails only the writes into a stage's temporary folder, after the run folder exists.
    """
    if kind is None:
        return
    prefix = str(under)
    if kind == "read-only":
        real_mkdir = Path.mkdir

        def mkdir(self, *args, **kwargs):
            if str(self).startswith(prefix):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        real_write_text = Path.write_text

        def write_text(self, *args, **kwargs):
            if str(self).startswith(prefix) and (kind == "full" or "/.tmp-" in str(self)):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)


def _hub_writes(hub_faults) -> list[str]:
    """Return the repo creations and commits in the stand-in's request log."""
    return [f"{entry['method']} {entry['path']}" for entry in hub_faults.request_log()
            if entry["method"] == "POST" and (entry["path"] == "/api/repos/create" or "/commit/" in entry["path"])]


def _assert_one_line(message: str) -> None:
    """The message is one line with the problem, then the fix: a second sentence, or Click's list of choices."""
    assert "\n" not in message
    assert message.endswith(".")
    assert ". " in message.rstrip(".") or "is not one of" in message, message
    assert "Traceback" not in message


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cli_bad_input(case, inputs, tiny_model_dir, hub_faults, tmp_path, monkeypatch):
    arguments = _arguments(case, inputs, tiny_model_dir)
    if arguments[0] == "push" and "--name" not in arguments:
        arguments += ["--name", "never-published"]
    _install_disk_fault(monkeypatch, case.disk, tmp_path / "run")
    if not case.token:
        monkeypatch.delenv("HF_TOKEN")
    hub_faults.clear_request_log()

    result = CliRunner().invoke(cli, [*arguments, "--run-dir", str(tmp_path / "run")], catch_exceptions=False)

    assert result.exit_code == case.code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert re.search(case.pattern, errors[0]), errors[0]
    _assert_one_line(errors[0])
    assert "Traceback" not in result.stderr
    assert _hub_writes(hub_faults) == []
    assert not (inputs / "remote-code-ran").exists()


def _form(case: Case, inputs: Path, tiny: Path) -> tuple[dict, dict] | None:
    """Translate a case's CLI arguments into the app's form and run_defaults; None if the app lacks an option."""
    arguments = _arguments(case, inputs, tiny)
    if arguments[0] != "push":
        return None
    form = dict(model=arguments[1], bits=None, method="gptq", dataset="openai/gsm8k", dataset_config="", budget=None,
                selection=None, objective=None, namespace="", private=False, token_text="hf_test_write", profile=None, oauth_token=None)
    run_defaults: dict = {}
    rest = arguments[2:]
    while rest:
        option = rest.pop(0)
        if option in RUN_DEFAULT_FLAGS:
            name, value = RUN_DEFAULT_FLAGS[option]
            run_defaults[name] = value
        elif option in RUN_DEFAULT_OPTIONS:
            name, convert = RUN_DEFAULT_OPTIONS[option]
            run_defaults[name] = convert(rest.pop(0))
        elif option in FORM_OPTIONS:
            form[FORM_OPTIONS[option]] = rest.pop(0)
        else:
            return None  # --name, --no-push and --output have no field in the app
    return form, run_defaults


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_app_bad_input(case, inputs, tiny_model_dir, small_gsm8k, hub_faults, tmp_path, monkeypatch):
    import gradio as gr

    from ui.app import RepairApp

    translated = _form(case, inputs, tiny_model_dir)
    if translated is None:
        pytest.skip("the app has no field for this option")
    form, run_defaults = translated
    sizes = tiny_run_config(tiny_model_dir, small_gsm8k).to_dict()
    for name in ("model", "bits", "method", "dataset", "dataset_config", "budget"):
        del sizes[name]
    app = RepairApp({**sizes, **run_defaults}, tmp_path / "work", in_space=False)
    _install_disk_fault(monkeypatch, case.disk, tmp_path / "work")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    hub_faults.clear_request_log()

    with pytest.raises(gr.Error) as raised:
        app.run_job(**form)

    message = raised.value.message
    assert re.search(case.ui_pattern or case.pattern, message), message
    _assert_one_line(message)
    assert _hub_writes(hub_faults) == []
    assert not (inputs / "remote-code-ran").exists()


def test_bad_input_table_size():
    # The table covers at least 25 distinct inputs, and the app runs most of them.
    assert len(set(CASE_IDS)) == len(CASES) >= 25
    runnable = [case for case in CASES if case.cli[0] == "push"
                and not {"--name", "--no-push", "--output"} & set(case.cli)]
    assert len(runnable) >= 25


def test_run_folder_of_other_settings(inputs, tmp_path):
    run_dir = tmp_path / "run"
    base = ["diagnose", "smollm2-135m", "--dataset", str(inputs / "noanswers"), "--run-dir", str(run_dir)]
    CliRunner().invoke(cli, [*base, "--bits", "4"])
    result = CliRunner().invoke(cli, [*base, "--bits", "3"])
    assert result.exit_code == 1
    assert "was made with other settings (bits differ). Rerun with the same settings, or pass a new --run-dir" in result.stderr


def test_malformed_lines_counted_and_rest_used(tmp_path, caplog):
    import logging

    from repair.data import load_split

    rows = gsm8k_rows("train", 3)
    text = json.dumps(rows[0]) + "\n{broken\n" + json.dumps(rows[1]) + "\n[1]\n" + json.dumps(rows[2]) + "\n"
    (tmp_path / "train.jsonl").write_text(text)
    with caplog.at_level(logging.WARNING, logger="repair.data"):
        loaded = load_split(str(tmp_path), "train")
    warnings = [record.getMessage() for record in caplog.records if record.name == "repair.data"]
    assert warnings == [f"Dropped rows from {tmp_path / 'train.jsonl'}: "
                        "{'malformed JSON line': 1, 'line is not a JSON object': 1}"]
    assert len(loaded.problems) == 3
    assert loaded.dropped == {"malformed JSON line": 1, "line is not a JSON object": 1}
    assert loaded.summary()["dropped"] == {"malformed JSON line": 1, "line is not a JSON object": 1}


@pytest.mark.parametrize(("error_number", "reason"), [(errno.ENOSPC, "No space left on device"),
                                                      (errno.EROFS, "Read-only file system")])
def test_output_disk_errors(tmp_path, monkeypatch, error_number, reason):
    import shutil

    from repair.errors import HubError
    from repair.publish import RepoPlan, export_folders

    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "README.md").write_text("# repo\n")
    plans = {"adapter": RepoPlan(kind="adapter", repo_id="testuser/repo", repo_type="model", folder=folder)}

    def failing_copy(source, target, *args, **kwargs):
        raise OSError(error_number, os.strerror(error_number), str(target))

    # copytree binds copy2 as its default when shutil is imported, so the fault goes into copytree itself.
    monkeypatch.setattr(shutil, "copytree", failing_copy)
    with pytest.raises(HubError) as raised:
        export_folders(plans, tmp_path / "out")
    assert raised.value.message == (f"cannot write the repo folders to {tmp_path / 'out'}: {reason}. "
                                    "Pass --output with a writable folder that has free space.")

"""The Gradio app's handlers, called directly: input errors, tokens, search, cancel, and a tiny job."""

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from model_fixtures import tiny_run_config

# The form's fields; every other RunConfig field comes from run_defaults.
FORM_FIELDS = ("model", "bits", "method", "dataset", "dataset_config", "budget")


@pytest.fixture(autouse=True)
def no_gradio_analytics(monkeypatch):
    # With analytics on, building Blocks starts a thread that requests Gradio's latest version from a remote host.
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture
def tiny_defaults():
    """RunConfig sizes that run the tiny model in seconds; the form supplies the rest."""
    settings = tiny_run_config(Path("model-from-the-form"), Path("dataset-from-the-form")).to_dict()
    return {name: value for name, value in settings.items() if name not in FORM_FIELDS}


@pytest.fixture
def app(tmp_path, tiny_defaults):
    from ui.app import RepairApp

    return RepairApp(tiny_defaults, tmp_path / "work", in_space=False)


def _job(app, **form):
    """Call run_job with a complete form; ``form`` overrides single fields."""
    values = dict(model="smollm2-135m", bits=4, method="gptq", dataset="openai/gsm8k", dataset_config="main",
                  budget=8, selection=None, objective=None, namespace="testuser", private=False, token_text="hf_test_write",
                  profile=None, oauth_token=None)
    values.update(form)
    return app.run_job(**values)


def _error_message(app, **form) -> str:
    """Return the message of the gr.Error that run_job raises for ``form``."""
    import gradio as gr

    with pytest.raises(gr.Error) as raised:
        _job(app, **form)
    return raised.value.message


def _error_message_of(handler, *arguments) -> str:
    """Return the message of the gr.Error that ``handler`` raises for ``arguments``."""
    import gradio as gr

    with pytest.raises(gr.Error) as raised:
        handler(*arguments)
    return raised.value.message


def _oauth_token(token):
    import gradio as gr

    return gr.OAuthToken(token=token, scope="openid profile read-repos write-repos", expires_at=0)


def test_build_ui_does_not_launch(tmp_path):
    from ui.app import QUEUE_MAX_SIZE, build_ui

    demo = build_ui(work_dir=tmp_path)
    assert not demo.is_running
    assert demo._queue.max_size == QUEUE_MAX_SIZE
    assert demo._queue.default_concurrency_limit == 1


def test_token_field_outside_space(tmp_path):
    import gradio as gr

    from ui.app import build_ui

    demo = build_ui(work_dir=tmp_path, in_space=False)
    blocks = list(demo.blocks.values())
    assert not any(isinstance(block, gr.LoginButton) for block in blocks)
    token_fields = [b for b in blocks if isinstance(b, gr.Textbox) and b.label == "Hub token"]
    assert len(token_fields) == 1
    assert token_fields[0].type == "password"
    assert token_fields[0].visible is True


@pytest.fixture
def space_env(monkeypatch):
    """The environment of a Space with "Sign in with Hugging Face" turned on.

    gradio.oauth reads the OAuth client settings when it is imported, so they are patched there.
    Nothing contacts the provider URL until a visitor signs in.
    """
    import gradio.oauth

    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "testuser/repair")
    monkeypatch.setattr(gradio.oauth, "OAUTH_CLIENT_ID", "test-client")
    monkeypatch.setattr(gradio.oauth, "OAUTH_CLIENT_SECRET", "test-secret")
    monkeypatch.setattr(gradio.oauth, "OAUTH_SCOPES", "openid profile read-repos write-repos")
    monkeypatch.setattr(gradio.oauth, "OPENID_PROVIDER_URL", "http://127.0.0.1:9")


def test_login_button_in_space(tmp_path, space_env):
    import gradio as gr

    from ui.app import build_ui

    demo = build_ui(work_dir=tmp_path)
    blocks = list(demo.blocks.values())
    assert any(isinstance(block, gr.LoginButton) for block in blocks)
    token_fields = [b for b in blocks if isinstance(b, gr.Textbox) and b.label == "Hub token"]
    assert token_fields[0].visible is False


def test_space_detection_needs_system_and_id(monkeypatch):
    from ui.app import running_in_space

    monkeypatch.delenv("SYSTEM", raising=False)
    monkeypatch.setenv("SPACE_ID", "testuser/repair")
    assert not running_in_space()
    monkeypatch.setenv("SYSTEM", "spaces")
    assert running_in_space()


def test_run_defaults_reject_unknown_field(tmp_path):
    from ui.app import build_ui

    with pytest.raises(ValueError, match="not RunConfig fields: bit_width"):
        build_ui({"bit_width": 4}, tmp_path)


def test_bad_bit_width_rejected(app):
    # The same line as `repair push --bits 5` prints after "Error: "
    assert _error_message(app, bits=5) == "--bits 5 is not supported. Use one of 2, 3, 4, 8."
    assert not app.work_dir.exists()


def test_non_number_bit_width_rejected(app):
    assert _error_message(app, bits="four") == "--bits 'four' is not a whole number. Pass a whole number to --bits."


def test_missing_token_outside_space(app):
    message = _error_message(app, token_text="  ")
    assert message == "no Hub token given. Paste a Hub token with write access into the Hub token field."


def test_missing_sign_in_in_space(tmp_path, tiny_defaults):
    from ui.app import RepairApp

    app = RepairApp(tiny_defaults, tmp_path, in_space=True)
    # A pasted token does not count in a Space: only the visitor's sign-in does.
    message = _error_message(app, token_text="hf_test_write")
    assert message == "you are not signed in. Sign in with Hugging Face: the repos are created with your account."


def test_read_only_token_rejected_before_run(app):
    message = _error_message(app, token_text="hf_test_read", model="testuser/never-made")
    assert message.startswith("the Hub token is read-only. Create a token with write access")
    assert not app.work_dir.exists()


def test_foreign_namespace_rejected(app):
    assert "cannot write to namespace otheruser" in _error_message(app, namespace="otheruser")


def test_unknown_alias_rejected(app, small_gsm8k, hub_api):
    message = _error_message(app, model="smollm9-1b", dataset=str(small_gsm8k))
    # The same line as `repair push smollm9-1b` prints after "Error: "
    assert message == ("unknown model alias 'smollm9-1b'. Use a built-in alias (smollm2-135m), "
                       "a Hub id such as org/name, or a local path.")
    assert not hub_api.repo_exists("testuser/smollm9-1b-gptq-w4")


def test_local_paths_rejected_in_space(tmp_path, tiny_defaults):
    from ui.app import RepairApp

    app = RepairApp(tiny_defaults, tmp_path / "work", in_space=True)
    signed_in = _oauth_token("hf_test_write")
    message = _error_message(app, model=str(tmp_path), oauth_token=signed_in)
    assert message == (f"the model {str(tmp_path)!r} is a local path, which this app does not accept. "
                       "Give a Hub model id such as org/name.")
    message = _error_message(app, model="testuser/some-model", dataset="/etc", oauth_token=signed_in)
    assert re.match(r"the dataset '/etc' is a local path", message)


def test_search_fills_dropdown(app, hub_api):
    hub_api.create_repo("testuser/searchable-tiny-llama", exist_ok=True)
    dropdown = app.search_models("searchable-tiny", "hf_test_write", None)
    assert [choice[0] for choice in dropdown.choices] == ["testuser/searchable-tiny-llama"]
    assert dropdown.value == "testuser/searchable-tiny-llama"


def test_search_never_sends_server_token(tmp_path, hub_api, hub_faults):
    from ui.app import RepairApp

    hub_api.create_repo("testuser/searchable-anonymous", exist_ok=True)
    app = RepairApp(None, tmp_path, in_space=True)
    hub_faults.clear_request_log()
    # HF_TOKEN is set in the tests' environment, like a Space owner's secret, and no visitor is signed in.
    dropdown = app.search_models("searchable-anonymous", None, None)
    assert [choice[0] for choice in dropdown.choices] == ["testuser/searchable-anonymous"]
    searches = [entry for entry in hub_faults.request_log() if entry["path"] == "/api/models"]
    assert searches
    assert all(entry["user"] is None for entry in searches)


def test_search_uses_signed_in_token(tmp_path, hub_api, hub_faults):
    from ui.app import RepairApp

    app = RepairApp(None, tmp_path, in_space=True)
    hub_faults.clear_request_log()
    app.search_models("anything", None, _oauth_token("hf_other_write"))
    searches = [entry for entry in hub_faults.request_log() if entry["path"] == "/api/models"]
    assert [entry["user"] for entry in searches] == ["otheruser"]


def test_search_failure_reported(app, hub_faults):
    hub_faults.add_fault("^/api/models$", 400)
    message = _error_message_of(app.search_models, "tiny", "hf_test_write", None)
    assert message.startswith("The Hub search for 'tiny' failed: ")
    assert message.endswith(". Type the model id instead.")
    assert "\n" not in message


def test_empty_search_rejected(app):
    import gradio as gr

    with pytest.raises(gr.Error, match="Type part of a model name"):
        app.search_models("  ", "hf_test_write", None)


def test_progress_forwards_fraction_and_stage():
    import threading

    from ui.app import JobProgress

    calls = []
    progress = JobProgress(lambda value, desc: calls.append((value, desc)), threading.Event())
    progress.stage = "stage 3 of 7 (measure)"
    progress("score reference (train)", 2, 4)
    progress("unknown length", 3, None)
    assert calls == [(0.5, "stage 3 of 7 (measure): score reference (train)"),
                     ((3, None), "stage 3 of 7 (measure): unknown length")]


def test_cancel_stops_job_at_next_progress(tmp_path, tiny_defaults, monkeypatch, small_gsm8k):
    import gradio as gr

    from repair.pipeline import Run
    from ui.app import RepairApp

    app = RepairApp(tiny_defaults, tmp_path / "work", in_space=False, keep_run_folders=False)
    request = SimpleNamespace(session_hash="session-1")
    reports = []

    def cancelled_stage(run, until):
        # The visitor presses Cancel while the first stage runs; its next report stops the job.
        assert app.request_cancel(request).startswith("Cancelling")
        reports.append(until)
        run.progress("load data", 1, 2)
        raise AssertionError("the job went on after Cancel")

    monkeypatch.setattr(Run, "run", cancelled_stage)
    with pytest.raises(gr.Error, match="The job was cancelled"):
        _job(app, dataset=str(small_gsm8k), request=request)
    assert reports == ["prepare"]
    assert list((tmp_path / "work").iterdir()) == []
    # The lock is free again and no cancel flag is left for the session's next job.
    assert app.request_cancel(request) == "Cancelled."
    assert app._job_lock.acquire(blocking=False)


def test_frontier_chart_fills_missing_steps():
    from ui.app import frontier_chart

    chart = frontier_chart({"frontier_histogram": {"1": 3, "4": 1, "10": 2}})
    assert list(chart["frontier step"]) == [str(step) for step in range(1, 11)]
    assert list(chart["problems"]) == [3, 0, 0, 1, 0, 0, 0, 0, 0, 2]


def test_frontier_chart_empty():
    from ui.app import frontier_chart

    assert frontier_chart({"frontier_histogram": {}}).empty


def test_equivalent_command_has_no_token(tiny_defaults):
    from repair.config import PublishConfig, RunConfig
    from ui.app import equivalent_command

    config = RunConfig(model="smollm2-135m", bits=3, dataset="openai/gsm8k", dataset_config="main", **tiny_defaults)
    command = equivalent_command(config, PublishConfig(namespace="testuser", token="hf_test_write", private=True))
    assert command.startswith("repair push smollm2-135m --bits 3 --method gptq --dataset openai/gsm8k "
                              "--dataset-config main --calibration-samples 4 --train-problems 12 --test-problems 6 "
                              "--namespace testuser --private (in the web app, with ")
    assert "calibration_length=64" in command
    assert "hf_test" not in command


def test_form_sets_selection_objective(app):
    from repair.config import PublishConfig
    from ui.app import equivalent_command

    config = app.build_config("smollm2-135m", 4, "gptq", "openai/gsm8k", "main", 8, "random", "dpo")
    assert config.selection == "random"
    assert config.objective == "dpo"
    command = equivalent_command(config, PublishConfig(namespace="testuser", token="hf_test_write"))
    assert "--selection random --objective dpo" in command


def test_form_empty_choices_keep_defaults(app):
    config = app.build_config("smollm2-135m", 4, "gptq", "openai/gsm8k", "main", 8, None, "")
    assert config.selection == "frontier"
    assert config.objective == "sft"


def test_unknown_objective_rejected(app):
    assert _error_message(app, objective="ppo") == "--objective 'ppo' is not supported. Use one of sft, dpo, sft+dpo."


def test_tiny_job_publishes_three_repos(app, tiny_model_dir, small_gsm8k, hub_api):
    config = tiny_run_config(tiny_model_dir, small_gsm8k)
    summary, table, nll, frontiers, examples, links = _job(
        app, model=config.model, bits=config.bits, method=config.method, dataset=config.dataset, budget=config.budget)

    # The table: three models with real numbers
    assert list(table["model"]) == ["full precision", "quantized", "repaired"]
    for column in ("held-out NLL", "top-1 agreement"):
        values = list(table[column])
        assert all(isinstance(value, float) and math.isfinite(value) for value in values), values
    assert list(table["problems"]) == [config.test_problems] * 3
    assert list(nll["held-out NLL"]) == list(table["held-out NLL"])

    # The charts and the example failures come from the locate stage
    assert len(frontiers) >= 1
    assert frontiers["problems"].sum() >= len(examples) >= 1
    assert list(examples.columns) == ["problem id", "step", "flip token", "chosen", "rejected", "error type"]
    assert examples["step"].min() >= 1
    assert "Finished in" in summary

    # The links name the three repos, which exist on the stand-in
    stem = f"testuser/{config.slug()}"
    for repo_id, repo_type in ((stem, "model"), (f"{stem}-silver-bullet", "dataset"),
                               (f"{stem}-repair-lora", "model")):
        assert f"[{repo_id}]" in links
        assert hub_api.repo_exists(repo_id, repo_type=repo_type)

    # The token appears nowhere in the run folder, including the published cards
    (run_folder,) = app.work_dir.iterdir()
    for path in run_folder.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".txt"):
            assert "hf_test_write" not in path.read_text(errors="replace"), path


class _FakeDemo:
    """Stands in for the Blocks that `repair ui` launches, and records the launch arguments."""

    def __init__(self, **build_arguments):
        self.build_arguments = build_arguments
        self.launch_arguments = None

    def launch(self, **arguments):
        self.launch_arguments = arguments


@pytest.fixture
def fake_build_ui(monkeypatch):
    import ui.app

    built = []

    def build_ui(**arguments):
        built.append(_FakeDemo(**arguments))
        return built[-1]

    monkeypatch.setattr(ui.app, "build_ui", build_ui)
    return built


def test_ui_command_binds_loopback(fake_build_ui):
    from click.testing import CliRunner

    from cli import cli

    result = CliRunner().invoke(cli, ["ui", "--port", "7861"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (demo,) = fake_build_ui
    assert demo.launch_arguments["server_name"] == "127.0.0.1"
    assert demo.launch_arguments["server_port"] == 7861
    assert demo.build_arguments["allow_local_paths"] is True
    assert "Binding to" not in result.stderr


def test_ui_command_warns_on_public_host(fake_build_ui):
    from click.testing import CliRunner

    from cli import cli

    result = CliRunner().invoke(cli, ["ui", "--host", "0.0.0.0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (demo,) = fake_build_ui
    assert demo.launch_arguments["server_name"] == "0.0.0.0"
    assert demo.build_arguments["allow_local_paths"] is False
    assert "Binding to 0.0.0.0 outside a Space" in result.stderr

"""The Hub token never appears in logs, run folders, cards, published repos or the app's output."""

import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from model_fixtures import tiny_run_config

TOKEN = "hf_test_write"


def _files_containing(root: Path, secret: str) -> list[Path]:
    """Return every file under ``root`` whose bytes contain ``secret``, and check there were files to search."""
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files, f"nothing to search under {root}"
    return [path for path in files if secret.encode() in path.read_bytes()]


def test_cli_push_never_writes_token(tiny_model_dir, small_gsm8k, tmp_path, hub_storage, monkeypatch, hub_api):
    from cli import cli

    config = tiny_run_config(tiny_model_dir, small_gsm8k)
    arguments = ["push", config.model, "--bits", str(config.bits), "--no-pull", "--dataset", config.dataset,
                 "--calibration-samples", "4", "--calibration-length", "64", "--train-problems", "12",
                 "--test-problems", "6", "--budget", "8", "--namespace", "testuser", "--name", "secret-scan",
                 "--token", TOKEN, "--run-dir", str(tmp_path / "run"), "--output", str(tmp_path / "out")]
    # The cards quote the command line, so it must look as typed; HF_TOKEN is unset so that --token is the only source.
    monkeypatch.setattr(sys, "argv", ["repair", *arguments])
    monkeypatch.delenv("HF_TOKEN")

    result = CliRunner().invoke(cli, ["--verbose", *arguments], catch_exceptions=False)

    assert result.exit_code == 0, result.stderr[-3000:]
    assert hub_api.repo_exists("testuser/secret-scan-repair-lora")
    # Logs, at debug level, and the summary
    assert "repair.pipeline: Stage verify: finished in" in result.stderr
    assert TOKEN not in result.stdout
    assert TOKEN not in result.stderr
    # Run folder, exported repo folders, and the stand-in's storage of the published repos and its log
    assert _files_containing(tmp_path / "run", TOKEN) == []
    assert _files_containing(tmp_path / "out", TOKEN) == []
    assert _files_containing(hub_storage, TOKEN) == []
    # The cards quote the command with the token masked, which shows the scan covered the command line.
    card = (tmp_path / "out" / "secret-scan-repair-lora" / "README.md").read_text()
    assert "--token '***'" in card or "--token ***" in card


def test_app_job_never_shows_token(tiny_model_dir, small_gsm8k, tmp_path, hub_storage, caplog, monkeypatch):
    import pandas as pd

    from ui.app import RepairApp

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.delenv("HF_TOKEN")
    defaults = tiny_run_config(tiny_model_dir, small_gsm8k).to_dict()
    for name in ("model", "bits", "method", "dataset", "dataset_config", "budget"):
        del defaults[name]
    app = RepairApp(defaults, tmp_path / "work", in_space=False)

    with caplog.at_level(logging.DEBUG):
        outputs = app.run_job(model=str(tiny_model_dir), bits=2, method="gptq", dataset=str(small_gsm8k),
                              dataset_config="", budget=8, selection=None, objective=None, namespace="testuser", private=False, token_text=TOKEN,
                              profile=None, oauth_token=None)

    # What the page shows: the summary, tables, charts and links
    shown = [output.to_csv() if isinstance(output, pd.DataFrame) else str(output) for output in outputs]
    assert any("testuser/" in text for text in shown)
    assert all(TOKEN not in text for text in shown)
    # The app's logs, the job's run folder and the published repos
    messages = [record.getMessage() for record in caplog.records]
    assert any("Job " in message and "started" in message for message in messages)
    assert [message for message in messages if TOKEN in message] == []
    assert _files_containing(tmp_path / "work", TOKEN) == []
    assert _files_containing(hub_storage, TOKEN) == []


@pytest.mark.parametrize("page", ["/", "/config"])
def test_app_pages_never_show_token(tmp_path, monkeypatch, page):
    import urllib.request

    from ui.app import build_ui

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    # HF_TOKEN is the server's own token here, which a visitor's page must never carry.
    demo = build_ui(work_dir=tmp_path / "work", in_space=False)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        body = opener.open(demo.local_url.rstrip("/") + page, timeout=30).read().decode()
    finally:
        demo.close()
    assert "Hub token" in body or "hub-token" in body
    assert TOKEN not in body

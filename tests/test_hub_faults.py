"""Hub faults injected by the stand-in: transient ones retried, others explained, no repo half-written."""

import json
import logging
import re
import time
import uuid

import pytest

from repair.errors import HubError, ModelSourceError
from repair.publish import RepoPlan, push_repos

KINDS = ("quantized", "dataset", "adapter")  # the repos of every run; a merged checkpoint is optional


@pytest.fixture(autouse=True)
def short_waits(monkeypatch):
    """Retry after 10 ms instead of seconds; a Retry-After header still sets its own wait."""
    import repair.retry

    monkeypatch.setattr(repair.retry, "BASE_WAIT", 0.01)


@pytest.fixture
def plans(tmp_path) -> dict:
    """Three small repo folders, like a run's, under fresh names in testuser's namespace."""
    stem = f"faults-{uuid.uuid4().hex[:8]}"
    names = {"quantized": stem, "dataset": f"{stem}-silver-bullet", "adapter": f"{stem}-repair-lora"}
    plans = {}
    for kind in KINDS:
        folder = tmp_path / names[kind]
        folder.mkdir()
        (folder / "README.md").write_text(f"---\nlicense: apache-2.0\n---\n# {kind}\n")
        (folder / "data.json").write_text(json.dumps({"kind": kind}))
        plans[kind] = RepoPlan(kind=kind, repo_id=f"testuser/{names[kind]}",
                               repo_type="dataset" if kind == "dataset" else "model", folder=folder)
    return plans


def _api_path(plan: RepoPlan) -> str:
    return f"/api/{plan.repo_type}s/{plan.repo_id}"


def _commit_statuses(hub_faults, plan: RepoPlan) -> list:
    return [entry["status"] for entry in hub_faults.request_log()
            if entry["method"] == "POST" and entry["path"] == f"{_api_path(plan)}/commit/main"]


def _commit_titles(hub_api, plan: RepoPlan) -> list[str]:
    return [commit.title for commit in hub_api.list_repo_commits(plan.repo_id, repo_type=plan.repo_type)]


def _retry_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "repair.retry"]


def test_commit_5xx_retried(plans, hub_faults, hub_api, caplog):
    quantized = plans["quantized"]
    hub_faults.add_fault(f"^{re.escape(_api_path(quantized))}/commit/main$", 503, method="POST", count=2)
    hub_faults.clear_request_log()

    with caplog.at_level(logging.WARNING, logger="repair.retry"):
        urls = push_repos(plans, "hf_test_write", private=False)

    assert set(urls) == set(KINDS)
    assert _commit_statuses(hub_faults, quantized) == [503, 503, 200]
    assert _retry_lines(caplog) == [
        f"upload of {quantized.repo_id} failed (HTTP 503); retry 1 of 4 in 0.0 s",
        f"upload of {quantized.repo_id} failed (HTTP 503); retry 2 of 4 in 0.0 s",
    ]
    # One upload commit per repo, after the stand-in's initial commit
    for plan in plans.values():
        assert _commit_titles(hub_api, plan) == ["Upload " + plan.kind + " from repair", "initial commit"]


def test_429_honours_retry_after(plans, hub_faults, caplog):
    adapter = plans["adapter"]
    hub_faults.add_fault("^/api/repos/create$", 429, method="POST", count=1, headers={"Retry-After": "1"})

    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="repair.retry"):
        push_repos({"adapter": adapter, **plans}, "hf_test_write", private=False)

    assert time.monotonic() - start >= 1.0
    assert _retry_lines(caplog)[0].endswith("failed (HTTP 429); retry 1 of 4 in 1.0 s")
    assert "repo creation of testuser/faults-" in _retry_lines(caplog)[0]


def test_connection_reset_retried(plans, hub_faults, hub_api, caplog):
    dataset = plans["dataset"]
    hub_faults.add_fault(f"^{re.escape(_api_path(dataset))}/commit/main$", method="POST", count=1, reset=True)
    hub_faults.clear_request_log()

    with caplog.at_level(logging.WARNING, logger="repair.retry"):
        push_repos(plans, "hf_test_write", private=False)

    assert _commit_statuses(hub_faults, dataset) == ["reset", 200]
    assert len(_retry_lines(caplog)) == 1
    assert f"upload of {dataset.repo_id} failed (" in _retry_lines(caplog)[0]
    assert _commit_titles(hub_api, dataset) == ["Upload dataset from repair", "initial commit"]


def test_403_on_write_not_retried(plans, hub_faults, hub_api):
    quantized = plans["quantized"]
    hub_faults.add_fault(f"^{re.escape(_api_path(quantized))}/commit/main$", 403, method="POST", count=5)
    hub_faults.clear_request_log()

    with pytest.raises(HubError) as raised:
        push_repos(plans, "hf_test_write", private=False)

    message = raised.value.message
    assert message.startswith(f"upload of {quantized.repo_id} failed: ")
    assert message.endswith(". Check that the token may write to this namespace.")
    assert "\n" not in message
    assert _commit_statuses(hub_faults, quantized) == [403]
    # The failed repo contains only its initial commit, and the later repos were never created.
    assert _commit_titles(hub_api, quantized) == ["initial commit"]
    assert not hub_api.repo_exists(plans["adapter"].repo_id)
    hub_faults.clear_faults()


def test_persistent_5xx_gives_up(plans, hub_faults, hub_api, caplog):
    adapter = plans["adapter"]
    hub_faults.add_fault(f"^{re.escape(_api_path(adapter))}/commit/main$", 502, method="POST", count=10)
    hub_faults.clear_request_log()

    with caplog.at_level(logging.WARNING, logger="repair.retry"), pytest.raises(HubError) as raised:
        push_repos(plans, "hf_test_write", private=False)

    assert raised.value.message == (f"upload of {adapter.repo_id} failed 5 times, last with HTTP 502. "
                                    "Wait a few minutes, then rerun the same command; finished stages are kept.")
    assert raised.value.repo_id == adapter.repo_id
    assert _commit_statuses(hub_faults, adapter) == [502] * 5
    assert len(_retry_lines(caplog)) == 4
    # The adapter repo is empty, not half-written; the two repos before it are complete.
    assert hub_api.list_repo_files(adapter.repo_id) == [".gitattributes"]
    for kind in ("quantized", "dataset"):
        files = hub_api.list_repo_files(plans[kind].repo_id, repo_type=plans[kind].repo_type)
        assert sorted(files) == [".gitattributes", "README.md", "data.json"]
    hub_faults.clear_faults()


def test_whoami_5xx_retried(hub_faults, caplog):
    from repair.publish import check_write_access

    hub_faults.add_fault("^/api/whoami-v2$", 500, count=1)
    with caplog.at_level(logging.WARNING, logger="repair.retry"):
        check_write_access("hf_test_write", "testuser")
    assert _retry_lines(caplog) == ["token check of the Hub failed (HTTP 500); retry 1 of 4 in 0.0 s"]


@pytest.fixture(scope="module")
def pulled_repo(hub_api, tiny_model_dir) -> str:
    repo_id = "testuser/faults-pull-tiny"
    hub_api.create_repo(repo_id, exist_ok=True)
    hub_api.upload_folder(repo_id=repo_id, folder_path=tiny_model_dir)
    return repo_id


def test_pull_5xx_retried(pulled_repo, hub_faults, caplog):
    from repair.sources import resolve_model

    # model_info is retried here; the download requests are retried by huggingface_hub itself.
    hub_faults.add_fault(f"^/api/models/{pulled_repo}$", 503, method="GET", count=1)
    hub_faults.add_fault(f"^/{pulled_repo}/resolve/[0-9a-f]+/config.json$", 503, count=1)
    with caplog.at_level(logging.WARNING):
        source = resolve_model(pulled_repo, "hf_test_write")

    assert (source.path / "model.safetensors").is_file()
    assert _retry_lines(caplog) == [f"model lookup of {pulled_repo} failed (HTTP 503); retry 1 of 4 in 0.0 s"]


def test_pull_404_explained(pulled_repo, hub_faults):
    from repair.sources import resolve_model

    hub_faults.add_fault(f"^/api/models/{pulled_repo}$", 404, method="GET", count=1,
                         headers={"X-Error-Code": "RepoNotFound"})
    with pytest.raises(ModelSourceError) as raised:
        resolve_model(pulled_repo, "hf_test_write")
    assert raised.value.message == (f"model {pulled_repo} not found on the Hub. Check the id; for a private model "
                                    "pass a token that can read it (--token or HF_TOKEN).")


def test_pull_404_on_file_explained(pulled_repo, hub_faults, tmp_path, monkeypatch):
    from repair.sources import resolve_model

    # A fresh cache, so that config.json must be downloaded again
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    hub_faults.add_fault(f"^/{pulled_repo}/resolve/[0-9a-f]+/config.json$", 404, count=2,
                         headers={"X-Error-Code": "EntryNotFound"})
    with pytest.raises(ModelSourceError) as raised:
        resolve_model(pulled_repo, "hf_test_write")
    assert raised.value.message == f"model {pulled_repo} has no config.json. Pick a transformers causal LM repo."

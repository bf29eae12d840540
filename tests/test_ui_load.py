"""Twenty browser sessions run jobs at once: jobs wait in the queue, memory stays bounded, tokens stay apart.

The job itself is replaced by a cheap stand-in that checks the visitor's token with the Hub stand-in
and returns results named after the visitor's model, so that the test measures the app and not the pipeline.
"""

import threading
import time

import pytest

from test_ui_browser import CHROMIUM, CHROMIUM_ARGS, _served

pytestmark = pytest.mark.slow

SESSIONS = 20
TOKENS = {"testuser": "hf_test_write", "otheruser": "hf_other_write"}
JOB_SECONDS = 1.5  # long enough for the queue to fill while the first jobs run
WAVE_TIMEOUT = 120  # seconds for every session of one wave to see results or a full-queue error
MAX_MEMORY_GROWTH = 300e6  # bytes of resident memory the server process may gain over all jobs


class CheapJobs:
    """Replaces RepairApp._run_stages: records who ran what and how many ran at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.jobs: list[tuple[str, str, str]] = []  # (model, token, Hub user of the token)

    def __call__(self, app, config, publish_config, root, token, job_progress, start):
        import pandas as pd
        from huggingface_hub import HfApi

        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            user = HfApi(token=token).whoami()["name"]
            for step in range(5):
                job_progress("cheap job", step, 5)
                time.sleep(JOB_SECONDS / 5)
            with self.lock:
                self.jobs.append((config.model, token, user))
            stem = f"{publish_config.namespace or user}/{config.model.split('/')[-1]}"
            table = pd.DataFrame([["repaired", 1.0, 0.5, 6, 60]],
                                 columns=["model", "held-out NLL", "top-1 agreement", "problems", "tokens"])
            chart = pd.DataFrame({"model": ["repaired"], "held-out NLL": [1.0]})
            frontiers = pd.DataFrame({"frontier step": ["1"], "problems": [1]})
            examples = pd.DataFrame([["p", 1, "3", "a", "b", "execution"]],
                                    columns=["problem id", "step", "flip token", "chosen", "rejected", "error type"])
            links = f"- LoRA adapter: [{stem}-repair-lora](http://127.0.0.1/{stem}-repair-lora)"
            return f"**Finished** for {user}.", table, chart, frontiers, examples, links
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def load_app(tmp_path, monkeypatch):
    """The app with the cheap job, served on a free loopback port; yields (url, CheapJobs)."""
    from ui.app import RepairApp, build_ui, launch_options

    jobs = CheapJobs()
    monkeypatch.setattr(RepairApp, "_run_stages", lambda app, *args: jobs(app, *args))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with _served(build_ui(work_dir=tmp_path / "work", in_space=False), launch_options()) as url:
        yield url, jobs


def _session_user(index: int) -> str:
    return "testuser" if index % 2 == 0 else "otheruser"


def _outcome(page, join_statuses: list[int]) -> str | None:
    """Return "results", "queue full" or None while the session's job is still pending.

    Gradio 6.31 returns 503 to a join request when the queue is full; its page shows that only in
    a toast that closes itself, so the test reads the response status instead.
    """
    if join_statuses and join_statuses[-1] == 503:
        return "queue full"
    if page.locator("#links a").count():
        return "results"
    return None


def test_twenty_sessions(load_app):
    import psutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}; install it with apt-get install chromium")
    url, jobs = load_app
    process = psutil.Process()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        pages = []
        joins: list[list[int]] = [[] for _ in range(SESSIONS)]  # statuses of each session's queue join requests
        for index in range(SESSIONS):
            page = browser.new_context().new_page()
            page.on("response", lambda response, index=index: joins[index].append(response.status)
                    if "/queue/join" in response.url else None)
            page.goto(url)
            page.locator("#hub-token input").fill(TOKENS[_session_user(index)])
            page.locator("#model textarea").fill(f"testorg/load-model-{index:02d}")
            pages.append(page)
        memory_before = process.memory_info().rss

        # Waves of clicks: sessions that find the queue full press Run again once the wave has ended.
        pending = list(range(SESSIONS))
        rejected_total = 0
        for _ in range(4):
            # dispatch_event skips the actionability waits of click(), so that the clicks arrive together.
            for index in pending:
                pages[index].get_by_role("button", name="Run", exact=True).dispatch_event("click")
            outcomes: dict[int, str] = {}
            deadline = time.monotonic() + WAVE_TIMEOUT
            while len(outcomes) < len(pending) and time.monotonic() < deadline:
                for index in pending:
                    if index not in outcomes and (found := _outcome(pages[index], joins[index])) is not None:
                        outcomes[index] = found
                pages[0].wait_for_timeout(200)  # lets Playwright deliver the response events
            assert len(outcomes) == len(pending), f"sessions without an outcome: {set(pending) - set(outcomes)}"
            rejected = [index for index in pending if outcomes[index] == "queue full"]
            rejected_total += len(rejected)
            for index in rejected:
                joins[index].clear()
                pages[index].reload()
                pages[index].locator("#hub-token input").fill(TOKENS[_session_user(index)])
                pages[index].locator("#model textarea").fill(f"testorg/load-model-{index:02d}")
            pending = rejected
            if not pending:
                break

        # Every session got its own results, with its own user, and no page shows a token.
        assert pending == []
        for index, page in enumerate(pages):
            links = page.locator("#links a").all_inner_texts()
            assert links == [f"{_session_user(index)}/load-model-{index:02d}-repair-lora"]
            content = page.content()
            for other in range(SESSIONS):
                if other != index:
                    assert f"load-model-{other:02d}" not in content
            for token in TOKENS.values():
                assert token not in content
        memory_after = process.memory_info().rss
        browser.close()

    # One job at a time, each with its own visitor's token; the queue turned some sessions away.
    assert jobs.max_running == 1
    assert len(jobs.jobs) == SESSIONS
    for model, token, user in jobs.jobs:
        index = int(model.rsplit("-", 1)[1])
        assert user == _session_user(index)
        assert token == TOKENS[user]
    assert rejected_total > 0
    assert memory_after - memory_before < MAX_MEMORY_GROWTH

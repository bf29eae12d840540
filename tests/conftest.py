"""Test session setup: a local Hub stand-in, client environment and a network guard.

huggingface_hub, datasets and transformers read HF_ENDPOINT and the other settings when they are
imported, so this block runs first, before any test module imports them.
"""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hubstub import HubControl, hub_env, install_socket_guard, start_hub  # noqa: E402

pytest_plugins = ["model_fixtures"]

_already_imported = [name for name in ("huggingface_hub", "datasets", "transformers") if name in sys.modules]
if _already_imported:
    names = ", ".join(_already_imported)
    raise RuntimeError(f"{names} was imported before tests/conftest.py set HF_ENDPOINT. Import it inside tests or fixtures.")

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="repair-tests-"))
HUB = start_hub(_SESSION_DIR / "hub")
atexit.register(HUB.stop)  # also stops the server if the session ends before pytest_sessionfinish
# A temporary HF_HOME keeps the user's real token and caches out of reach.
_environment = hub_env(HUB.url, _SESSION_DIR / "hf_home")
os.environ.clear()
os.environ.update(_environment)
NETWORK_ATTEMPTS = install_socket_guard()

import datasets  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402

# Without this, load_dataset() requests exported parquet files from the datasets-server host
# derived from HF_ENDPOINT (datasets-server.127.0.0.1), and resolving that name is a DNS lookup.
datasets.config.USE_PARQUET_EXPORT = False

_guard_report: list[str] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs on the real model")


def pytest_sessionfinish(session, exitstatus):
    HUB.stop()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
    if NETWORK_ATTEMPTS:
        hosts = ", ".join(sorted(set(NETWORK_ATTEMPTS)))
        _guard_report.append(f"The socket guard blocked network access outside 127.0.0.1: {hosts}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    for line in _guard_report:
        terminalreporter.write_line(line, red=True, bold=True)


@pytest.fixture(scope="session")
def hub_url() -> str:
    return HUB.url


@pytest.fixture(scope="session")
def hub_storage() -> Path:
    """The stand-in's storage folder: every published file, the repos' metadata and the server log."""
    return HUB.root


@pytest.fixture(scope="session")
def hub_api(hub_url) -> HfApi:
    return HfApi(endpoint=hub_url, token="hf_test_write")


@pytest.fixture
def hub_faults(hub_url):
    """HubControl for the stand-in, with faults cleared after the test."""
    control = HubControl(hub_url)
    yield control
    control.clear_faults()

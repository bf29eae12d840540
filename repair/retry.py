"""Retry Hub calls that failed for a transient reason, with exponential backoff and Retry-After.

huggingface_hub 1.33 already retries its preupload, LFS transfer and download requests
(``utils/_http.py: http_backoff``, 5 retries on 408, 429 and 5xx and on connection errors). It does
not retry ``whoami``, ``create_repo``, ``model_info`` or the commit itself, so those calls go
through ``call_with_retries``. Retrying a whole ``upload_folder`` is safe: the commit is one request
that the Hub applies completely or not at all, and files already uploaded are skipped. The API
judge's chat requests (``repair.judge_api``) go through it too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from repair.errors import HubError

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
MAX_ATTEMPTS = 5  # the first try and four retries
BASE_WAIT = 1.0  # seconds before the first retry, doubled before each next one
MAX_WAIT = 60.0  # seconds; a longer Retry-After is cut to this


def retry_after(response) -> float | None:
    """Return the seconds in a response's Retry-After header, None if absent or an HTTP date."""
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def transient_reason(error: BaseException) -> tuple[str, float | None] | None:
    """Return (reason, Retry-After seconds) if ``error`` is worth a retry, else None."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

    # InferenceClient 1.33 raises InferenceTimeoutError only for Python's TimeoutError. An httpx
    # timeout reaches the caller as httpx.ReadTimeout, a TransportError.
    if isinstance(error, InferenceTimeoutError):
        return "timeout", None
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        if status in RETRY_STATUSES:
            return f"HTTP {status}", retry_after(error.response)
        return None
    if isinstance(error, httpx.TransportError):  # connection reset or refused, timeouts
        return type(error).__name__, None
    return None


def call_with_retries(action: Callable[[], T], what: str, repo_id: str | None = None) -> T:
    """Return ``action()``, retrying transient Hub failures up to MAX_ATTEMPTS times in all.

    ``what`` and ``repo_id`` name the call in the log line of each retry and in the error. Other
    errors propagate unchanged, for the caller to explain. After the last attempt, raises ``HubError``.
    """
    wait = BASE_WAIT
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return action()
        except Exception as error:
            found = transient_reason(error)
            if found is None:
                raise
            reason, requested = found
            if attempt == MAX_ATTEMPTS:
                raise HubError(f"{what} of {repo_id or 'the Hub'} failed {MAX_ATTEMPTS} times, last with {reason}",
                               "Wait a few minutes, then rerun the same command; finished stages are kept",
                               repo_id=repo_id) from error
            delay = min(MAX_WAIT, requested if requested is not None else wait)
            log.warning("%s of %s failed (%s); retry %d of %d in %.1f s", what, repo_id or "the Hub", reason,
                        attempt, MAX_ATTEMPTS - 1, delay)
            time.sleep(delay)
            wait = min(MAX_WAIT, wait * 2)
    raise AssertionError("unreachable")  # the loop returns or raises

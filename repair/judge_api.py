"""A step judge served over HTTP: the Hugging Face Inference API or an OpenAI-compatible server.

It sends the same questions as the local judge in ``repair.judge`` through
``huggingface_hub.InferenceClient.chat_completion``, greedily and with a few tokens per reply,
and maps each reply to an option by its text. A served model returns no logits for a fixed set
of options, so a reply that names no option is an abstention, left out of the vote.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

from repair.errors import ConfigError, HubError, JudgeError
from repair.judge import StepJudge
from repair.retry import call_with_retries

log = logging.getLogger(__name__)

# "Yes", "No" or a letter, with room for a period or a chat model's markdown around it.
MAX_REPLY_TOKENS = 8
# Seconds per request. A timeout counts as a transient failure and is retried.
REQUEST_TIMEOUT = 60.0
TOKEN_FIX = ("Pass --token or set HF_TOKEN to a Hugging Face token with the permission "
             "'Make calls to Inference Providers'")


def is_url(spec: str | None) -> bool:
    """Return whether a judge spec is an http(s) URL, that is, an OpenAI-compatible server."""
    return spec is not None and spec.lower().startswith(("http://", "https://"))


def public_name(spec: str | None) -> str | None:
    """Return the judge spec without a URL's user, password, query and fragment, for logs and reports.

    NOTE: httpx logs each request's full URL at INFO level, which the CLI shows only with -v. A key
    in the URL reaches that log, so pass it with --token, which travels in the Authorization header.
    """
    if not is_url(spec):
        return spec
    parts = urlsplit(spec)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address goes back in brackets
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_reply(reply: str, options: list[str]) -> int | None:
    """Return the index of the option that a reply names, or None if it names none.

    The first option that the stripped reply starts with as a whole word wins, ignoring case.
    Failing that, the option that occurs first as a whole word anywhere in the reply wins. A
    one-letter option must be upper case there, so that the article "a" is not read as option A.
    """
    text = reply.strip()
    for index, option in enumerate(options):
        if re.match(rf"{re.escape(option)}\b", text, re.IGNORECASE):
            return index

    found: list[tuple[int, int]] = []
    for index, option in enumerate(options):
        flags = 0 if len(option) == 1 else re.IGNORECASE
        match = re.search(rf"\b{re.escape(option)}\b", text, flags)
        if match:
            found.append((match.start(), index))
    return min(found)[1] if found else None


class ApiJudge(StepJudge):
    """A step judge that sends each question to a served chat model and reads the option from its reply.

    ``client`` is a ``huggingface_hub.InferenceClient``. ``server_url`` is set for an
    OpenAI-compatible server, whose served model name is looked up before the first request.
    """

    def __init__(self, client, votes: int = 1, name: str = "", server_url: str | None = None,
                 token: str | None = None):
        super().__init__(votes, name)
        self.client = client
        self._server_url = server_url
        self._token = token
        self._model: str | None = None
        self._model_resolved = server_url is None  # the client sends a Hub id by itself

    @classmethod
    def connect(cls, spec: str, votes: int = 1, token: str | None = None) -> ApiJudge:
        """Check the settings and return a judge for a Hub model id or a server URL. No request is sent.

        Raises ``ConfigError`` in offline mode, and for a Hub id without a Hugging Face token.
        """
        from huggingface_hub import InferenceClient, constants, get_token

        name = public_name(spec) or ""
        if constants.is_offline_mode():
            raise ConfigError(f"--judge-api sends requests to {name}, but HF_HUB_OFFLINE is set",
                              "Unset HF_HUB_OFFLINE, or drop --judge-api and pass a local --judge model")

        if is_url(spec):
            # NOTE: without a token, InferenceClient sends the saved Hugging Face login (HF_TOKEN or the
            # token file) to the server as a bearer token, like it does for Inference Endpoints.
            client = InferenceClient(base_url=spec, token=token, timeout=REQUEST_TIMEOUT)
            return cls(client, votes, name, server_url=spec, token=token)

        token = token or get_token()
        if token is None:
            raise ConfigError(f"--judge-api with the Hub model {name} needs a Hugging Face token", TOKEN_FIX)
        # InferenceClient 1.33 sends a Hub id to the Hugging Face router and raises ValueError for other keys.
        if not token.startswith("hf_"):
            raise ConfigError(f"--judge-api with the Hub model {name} needs a Hugging Face token (hf_...), "
                              "not another provider's key", TOKEN_FIX)
        client = InferenceClient(model=spec, token=token, timeout=REQUEST_TIMEOUT)
        return cls(client, votes, name)

    def close(self) -> None:
        """Close the client, whose exit stack keeps a reference to every response until then."""
        self.client.close()

    def _choose(self, text: str, options: list[str]) -> int | None:
        prompt = f"{text}\nReply with only one of: {', '.join(options)}."
        response = self._request([{"role": "user", "content": prompt}])

        choices = getattr(response, "choices", None) or []
        reply = (choices[0].message.content if choices and choices[0].message else None) or ""
        choice = parse_reply(reply, options)
        if choice is None:
            log.debug("Judge %s replied %r, which names none of %s", self.name, reply[:80], options)
        return choice

    def _request(self, messages: list[dict]):
        """Send one chat completion, retrying transient failures, and turn the rest into ``JudgeError``."""
        from huggingface_hub.errors import HfHubHTTPError

        if not self._model_resolved:
            self._model = served_model(self._server_url or "", self._token)
            self._model_resolved = True
        try:
            return call_with_retries(
                lambda: self.client.chat_completion(messages, model=self._model, max_tokens=MAX_REPLY_TOKENS,
                                                    temperature=0.0),
                "judge request", self.name)
        except HubError as error:  # call_with_retries raises it after the last attempt
            check = "Check that the judge server is up, or wait" if self._server_url else "Wait"
            raise JudgeError(error.problem, f"{check} a few minutes and rerun the same command, which reuses the "
                                            "saved generations") from error
        except HfHubHTTPError as error:
            raise self._explain(error) from error
        except ValueError as error:  # a 200 response whose body is not JSON
            raise JudgeError(f"judge {self.name} sent a response that is not a chat completion",
                             "Check that --judge points at an OpenAI-compatible /v1/chat/completions server") from error

    def _explain(self, error) -> JudgeError:
        """Return the one-line error for an HTTP status that a retry cannot fix."""
        status = error.response.status_code if error.response is not None else None
        server_url = self._server_url is not None
        if status in (401, 403):
            fix = ("Pass --token with a token that the server accepts, which for an Inference Endpoint is a "
                   "Hugging Face token with access to it") if server_url else TOKEN_FIX
            return JudgeError(f"judge {self.name} rejected the token (HTTP {status})", fix)
        if status == 404:
            if server_url:
                return JudgeError(f"judge server {self.name} has no chat completions route or does not serve "
                                  f"model {self._model or '(none named)'} (HTTP 404)",
                                  "Check the URL; it should be the server's root or its /v1 path")
            return JudgeError(f"judge model {self.name} is not served by any Inference Provider (HTTP 404)",
                              "Check the model id, or choose a model whose Hub page lists Inference Providers")
        reason = (getattr(error, "server_message", None) or "").strip().splitlines()
        detail = f": {reason[0][:200]}" if reason else ""
        return JudgeError(f"judge {self.name} rejected the request with HTTP {status}{detail}",
                          "Check that the model is a chat model that the server or provider serves")


def models_url(server_url: str) -> str:
    """Return the OpenAI-compatible /v1/models URL beside a server's chat completions route."""
    parts = urlsplit(server_url)
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    path = path + "/models" if path.endswith("/v1") else path + "/v1/models"
    return urlunsplit(parts._replace(path=path))


def served_model(server_url: str, token: str | None) -> str | None:
    """Return the first model id that a server lists at /v1/models, or None if it lists none.

    vLLM rejects a request whose "model" field names no served model (HTTP 404), and
    InferenceClient 1.33 sends "dummy" there for a server URL unless a model is passed. TGI
    ignores the field. A server without the route gets None, so InferenceClient's "dummy" goes out.
    """
    import httpx
    from huggingface_hub.utils import build_hf_headers, get_session

    try:
        response = get_session().get(models_url(server_url), headers=build_hf_headers(token=token),
                                     timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
        log.debug("No served model name from %s (%s); the requests name none", public_name(server_url),
                  type(error).__name__)
        return None

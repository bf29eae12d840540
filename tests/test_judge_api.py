"""The served judge: requests, reply parsing, votes and errors against a local chat-completions server.

The server thread speaks the OpenAI chat-completions protocol that TGI and vLLM serve. Its
replies follow a script keyed on the prompt, so each test can assert the step and error type
that the judge settles on.
"""

import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from cli import cli
from repair.diagnose import DiagnoseConfig, ProblemDiagnosis, settle_unplaced, summarize
from repair.errors import ConfigError, JudgeError
from repair.generate import Generation
from repair.judge_api import ApiJudge, models_url, parse_reply, public_name
from repair.steps import Problem

QUESTION = "Natalia sold 48 clips in April and half as many in May. How many clips did she sell in total?"
REFERENCE = ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips.", "The answer is: 72"]
STEPS = ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48*24 = 1152 clips."]
TOKEN = "hf_judge_secret_0123456789"
SERVED_MODEL = "judge-chat-7b"


def wrong_step_two(prompt: str) -> str:
    """Return No for step 2 and Yes before it, and the letter of "method" in the type question."""
    typed = re.search(r"^([ABCD])\. method:", prompt, re.MULTILINE)
    if typed:
        return typed.group(1)
    step = int(re.search(r"step (\d+) of the student's solution", prompt, re.IGNORECASE).group(1))
    return "No" if step == 2 else "Yes"


class ChatServer:
    """A chat-completions server on 127.0.0.1 whose replies come from ``script(prompt)``.

    ``failures`` lists HTTP statuses to return, in order, before any reply. ``requests`` records
    each chat request's path, headers (names in lower case) and JSON body.
    """

    def __init__(self):
        self.script: Callable[[str], str] = wrong_step_two
        self.failures: list[int] = []
        self.requests: list[dict] = []
        self.models_requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if urlsplit(self.path).path != "/v1/models":
                    return self._send(404, {"error": "not found"})
                server.models_requests += 1
                self._send(200, {"object": "list", "data": [{"id": SERVED_MODEL, "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {name.lower(): value for name, value in self.headers.items()}
                server.requests.append({"path": self.path, "headers": headers, "body": body})
                if server.failures:
                    status = server.failures.pop(0)
                    return self._send(status, {"error": f"scripted failure {status}"}, {"Retry-After": "0"})
                reply = server.script(body["messages"][-1]["content"])
                self._send(200, {"id": "chat-1", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": reply}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def prompts(self) -> list[str]:
        return [request["body"]["messages"][-1]["content"] for request in self.requests]


@pytest.fixture
def chat_server():
    server = ChatServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    import repair.retry

    monkeypatch.setattr(repair.retry, "BASE_WAIT", 0.01)


def connect(server: ChatServer, votes: int = 3, suffix: str = "/v1") -> ApiJudge:
    return ApiJudge.connect(server.url + suffix, votes, TOKEN)


def test_judge_places_scripted_fault(chat_server):
    judge = connect(chat_server)

    fault = judge.settle(QUESTION, STEPS, "1152", REFERENCE, "p1")

    assert fault is not None
    assert fault.step_index == 1
    assert fault.step == STEPS[1]
    assert fault.error_type == "method"
    assert fault.reference_step == REFERENCE[1]
    assert f"judge {chat_server.url}/v1: step votes [2, 2, 2]" in fault.detail
    assert "type votes ['method', 'method', 'method']" in fault.detail
    # Per vote: Yes for step 1, No for step 2, then the type question.
    assert len(chat_server.requests) == 9


def test_majority_outvotes_one_vote(chat_server):
    def third_vote_disagrees(prompt: str) -> str:
        # The third wording calls step 3 wrong instead of step 2.
        if "follow correctly" in prompt:
            step = int(re.search(r"step (\d+) of", prompt).group(1))
            return "No" if step == 3 else "Yes"
        # The third vote lists method first, and this script picks the next option, reasoning.
        if "A. method:" in prompt:
            return "B"
        return wrong_step_two(prompt)

    chat_server.script = third_vote_disagrees
    fault = connect(chat_server).settle(QUESTION, STEPS, "1152", REFERENCE, "p1")

    assert fault.step_index == 1
    assert fault.error_type == "method"
    assert "step votes [2, 2, 3]" in fault.detail
    assert "type votes ['method', 'method', 'reasoning']" in fault.detail
    assert "no majority" not in fault.detail


def test_request_body_and_headers(chat_server):
    connect(chat_server, votes=1).settle(QUESTION, STEPS, "1152", REFERENCE)

    request = chat_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == SERVED_MODEL
    assert request["body"]["temperature"] == 0
    assert request["body"]["max_tokens"] == 8
    assert request["body"]["stream"] is False
    assert request["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert chat_server.prompts()[0].endswith("Answer Yes or No.\nReply with only one of: Yes, No.")
    assert chat_server.prompts()[-1].endswith("Reply with only one of: A, B, C, D.")
    assert chat_server.models_requests == 1


def test_unparseable_replies_abstain(chat_server, caplog):
    chat_server.script = lambda prompt: "I cannot tell from here."

    with caplog.at_level(logging.DEBUG, logger="repair"):
        fault = connect(chat_server).settle(QUESTION, STEPS, "1152", REFERENCE, "p7")

    assert fault is None
    # Each vote stops at its first abstention, and no type question follows.
    assert len(chat_server.requests) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"Judge {chat_server.url}/v1 abstained on problem p7: 3 of 3 step votes and 0 of 0 "
                        "type votes matched no option and were not counted"]


def test_one_abstaining_vote_is_not_counted(chat_server, caplog):
    def second_vote_rambles(prompt: str) -> str:
        return "Let me think about it" if prompt.count("Check step") else wrong_step_two(prompt)

    chat_server.script = second_vote_rambles
    with caplog.at_level(logging.WARNING, logger="repair"):
        fault = connect(chat_server).settle(QUESTION, STEPS, "1152", REFERENCE, "p2")

    assert fault.step_index == 1
    assert "step votes [2, 2]" in fault.detail
    assert "; 1 abstained" in fault.detail
    assert len([r for r in caplog.records if "abstained on problem p2" in r.getMessage()]) == 1


@pytest.mark.parametrize(("reply", "options", "expected"), [
    ("Yes", ["Yes", "No"], 0),
    ("  no.", ["Yes", "No"], 1),
    ("NO", ["Yes", "No"], 1),
    ("Not sure", ["Yes", "No"], None),
    ("The step is correct, yes.", ["Yes", "No"], 0),
    ("B", list("ABCD"), 1),
    ("c) method", list("ABCD"), 2),
    ("**D**", list("ABCD"), 3),
    ("Answer: B", list("ABCD"), 1),
    ("It is a method error, so C", list("ABCD"), 2),
    ("", list("ABCD"), None),
    ("none of them", list("ABCD"), None),
])
def test_parse_reply(reply, options, expected):
    assert parse_reply(reply, options) == expected


def test_401_is_one_line(chat_server):
    chat_server.failures = [401]

    with pytest.raises(JudgeError) as raised:
        connect(chat_server).settle(QUESTION, STEPS, "1152", REFERENCE)

    message = raised.value.message
    assert message.startswith(f"judge {chat_server.url}/v1 rejected the token (HTTP 401). Pass --token")
    assert "\n" not in message
    assert TOKEN not in message
    assert len(chat_server.requests) == 1


def test_hub_model_403_names_permission(chat_server, monkeypatch):
    from huggingface_hub.inference._providers import CONVERSATIONAL_AUTO_ROUTER

    # The router's address is fixed in huggingface_hub 1.33, so the test points it at the test server.
    monkeypatch.setattr(CONVERSATIONAL_AUTO_ROUTER, "base_url", chat_server.url)
    chat_server.failures = [403]

    with pytest.raises(JudgeError) as raised:
        ApiJudge.connect("org/judge-model", 1, TOKEN).settle(QUESTION, STEPS, "1152", REFERENCE)

    assert raised.value.message == ("judge org/judge-model rejected the token (HTTP 403). Pass --token or set HF_TOKEN "
                                    "to a Hugging Face token with the permission 'Make calls to Inference Providers'.")


def test_hub_model_goes_through_router(chat_server, monkeypatch):
    from huggingface_hub.inference._providers import CONVERSATIONAL_AUTO_ROUTER

    monkeypatch.setattr(CONVERSATIONAL_AUTO_ROUTER, "base_url", chat_server.url)

    fault = ApiJudge.connect("org/judge-model", 1, TOKEN).settle(QUESTION, STEPS, "1152", REFERENCE)

    assert fault.step_index == 1
    assert chat_server.requests[0]["path"] == "/v1/chat/completions"
    assert chat_server.requests[0]["body"]["model"] == "org/judge-model"
    assert chat_server.requests[0]["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert chat_server.models_requests == 0


def test_404_says_not_served(chat_server):
    chat_server.failures = [404]

    with pytest.raises(JudgeError, match=rf"does not serve model {SERVED_MODEL} \(HTTP 404\)\. Check the URL"):
        connect(chat_server).settle(QUESTION, STEPS, "1152", REFERENCE)


def test_503_then_200_is_retried(chat_server, caplog):
    chat_server.failures = [503]

    with caplog.at_level(logging.WARNING, logger="repair.retry"):
        fault = connect(chat_server, votes=1).settle(QUESTION, STEPS, "1152", REFERENCE)

    assert fault.step_index == 1
    assert len(chat_server.requests) == 4  # the failed request, then Yes, No and the type
    retries = [r.getMessage() for r in caplog.records if r.name == "repair.retry"]
    assert retries == [f"judge request of {chat_server.url}/v1 failed (HTTP 503); retry 1 of 4 in 0.0 s"]


def test_retries_exhausted_is_one_line(chat_server):
    chat_server.failures = [429, 502, 503, 504, 500]

    with pytest.raises(JudgeError) as raised:
        connect(chat_server).settle(QUESTION, STEPS, "1152", REFERENCE)

    assert raised.value.message.startswith(f"judge request of {chat_server.url}/v1 failed 5 times, last with HTTP 500.")
    assert "\n" not in raised.value.message
    assert len(chat_server.requests) == 5


def test_connection_refused_is_retried():
    import socket

    with socket.socket() as probe:  # a port that nothing listens on once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(JudgeError, match=r"failed 5 times, last with ConnectError\. Check that the judge server is up"):
        ApiJudge.connect(f"http://127.0.0.1:{port}", 1, TOKEN).settle(QUESTION, STEPS, "1152", REFERENCE)


def test_token_stays_out_of_names_and_logs(chat_server, caplog):
    secret_url = chat_server.url.replace("http://", "http://user:url-secret@") + "/v1?api_key=url-secret"
    chat_server.failures = [503]
    chat_server.script = lambda prompt: "unsure" if "Check step" in prompt else wrong_step_two(prompt)

    with caplog.at_level(logging.DEBUG):
        judge = ApiJudge.connect(secret_url, 3, TOKEN)
        fault = judge.settle(QUESTION, STEPS, "1152", REFERENCE, "p3")
        judge.close()

    assert judge.name == f"{chat_server.url}/v1"
    assert TOKEN not in fault.detail
    assert "url-secret" not in fault.detail
    assert TOKEN not in caplog.text
    repair_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("repair"))
    assert "judge request of" in repair_logs
    assert "abstained on problem p3" in repair_logs
    assert "url-secret" not in repair_logs
    assert chat_server.requests[-1]["body"]["model"] == SERVED_MODEL  # the query string reached the server


def test_settle_unplaced_records(chat_server):
    record = ProblemDiagnosis("p1", QUESTION, "72", "72", "1152", {"strict": True, "flexible": True},
                              {"strict": False, "flexible": False}, "gold")
    trace = Problem("p1", QUESTION, tuple(REFERENCE[:2]), "72")
    generation = Generation("p1", "", 20, STEPS, "1152")
    chat_server.script = lambda prompt: "?" if "Problem: Nobody" in prompt else wrong_step_two(prompt)
    open_record = ProblemDiagnosis("p2", "Nobody knows.", "1", "1", "2", {"strict": True, "flexible": True},
                                   {"strict": False, "flexible": False}, "gold")

    settle_unplaced(connect(chat_server), [(record, trace, generation),
                                           (open_record, Problem("p2", "Nobody knows.", ("1",), "1"), generation)])

    assert record.fault_by == "judge"
    assert record.fault["step_index"] == 1
    assert record.fault["error_type"] == "method"
    assert open_record.fault is None
    assert open_record.fault_by is None


@pytest.mark.parametrize(("spec", "expected"), [
    ("http://user:pw@127.0.0.1:8080/v1?api_key=k#frag", "http://127.0.0.1:8080/v1"),
    ("https://x.endpoints.huggingface.cloud/", "https://x.endpoints.huggingface.cloud/"),
    ("http://[::1]:8000", "http://[::1]:8000"),
    ("org/model", "org/model"),
    (None, None),
])
def test_public_name(spec, expected):
    assert public_name(spec) == expected


@pytest.mark.parametrize(("url", "expected"), [
    ("http://h:8080", "http://h:8080/v1/models"),
    ("http://h:8080/v1/", "http://h:8080/v1/models"),
    ("http://h/v1/chat/completions", "http://h/v1/models"),
    ("https://h/api/endpoint?x=1", "https://h/api/endpoint/v1/models?x=1"),
])
def test_models_url(url, expected):
    assert models_url(url) == expected


def test_summary_records_public_judge_name():
    config = DiagnoseConfig(dataset="x", judge="https://user:pw@judge.example/v1?key=k")

    settings = summarize([], config, {}, {})["settings"]

    assert settings["judge"] == "https://judge.example/v1"
    assert settings["judge_api"] is True


def test_config_checks_judge_api():
    with pytest.raises(ConfigError, match=r"^--judge-api needs a judge model\. Pass --judge with a Hub model id"):
        DiagnoseConfig(dataset="x", judge_api=True)
    with pytest.raises(ConfigError, match="is neither a Hub model id nor an http"):
        DiagnoseConfig(dataset="x", judge="./judges/local", judge_api=True)
    with pytest.raises(ConfigError, match="is a URL without a host"):
        DiagnoseConfig(dataset="x", judge="http:///v1")
    with pytest.raises(ConfigError, match="invalid port"):
        DiagnoseConfig(dataset="x", judge="http://judge:port/v1")
    assert DiagnoseConfig(dataset="x", judge="org/model", judge_api=True).judge_api is True
    assert DiagnoseConfig(dataset="x", judge="org/model").judge_api is False


def test_hub_model_needs_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)

    with pytest.raises(ConfigError, match=r"needs a Hugging Face token\. Pass --token or set HF_TOKEN"):
        ApiJudge.connect("org/judge-model", 1, None)
    with pytest.raises(ConfigError, match=r"not another provider's key"):
        ApiJudge.connect("org/judge-model", 1, "sk-other-provider")


def test_offline_mode_rejects_api_judge(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)

    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        ApiJudge.connect("org/judge-model", 1, TOKEN)


def test_cli_judge_api_without_judge():
    result = CliRunner().invoke(cli, ["diagnose", "smollm2-135m", "--bits", "2", "--judge-api"])

    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --judge-api needs a judge model. Pass --judge with a Hub model id or the http(s) URL of an "
        "OpenAI-compatible server."]

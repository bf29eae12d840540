"""Start the local Hub stand-in (hub_server.py), point the Hugging Face clients at it and guard the network.

Uses only the standard library, so that it can run before huggingface_hub is imported.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVER_SCRIPT = Path(__file__).with_name("hub_server.py")
STARTUP_TIMEOUT = 30.0  # seconds to wait for the READY line
# Variables that would make the clients skip the network, or that would take the token, the
# caches or the endpoint from outside the test's HF_HOME.
REMOVED_VARIABLES = (
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE", "HF_ASSETS_CACHE",
    "TRANSFORMERS_CACHE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH", "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_CO_STAGING",
)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class HubProcess:
    """Running stand-in server: its base ``url``, its storage ``root`` and its ``log_path``."""

    def __init__(self, process: subprocess.Popen, url: str, root: Path, log_path: Path):
        self.process = process
        self.url = url
        self.root = root
        self.log_path = log_path
        self.control = HubControl(url)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> HubProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_hub(root: Path, log_path: Path | None = None) -> HubProcess:
    """Start hub_server.py on a free port of 127.0.0.1 and wait for its READY line.

    The server stores repos under ``root`` and writes its log to ``log_path``, by default
    ``root / "hub_server.log"``. Raises RuntimeError with the log's end if the server does not
    start within STARTUP_TIMEOUT seconds.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path is not None else root / "hub_server.log"
    command = [sys.executable, str(SERVER_SCRIPT), "--root", str(root), "--port", "0"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    output = b""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while b"\n" not in output and time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            output += os.read(process.stdout.fileno(), 4096)
    line = output.decode(errors="replace").split("\n")[0].strip()
    if not line.startswith("READY http://"):
        process.kill()
        process.wait()
        log_tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"The Hub stand-in did not start. Its stdout was {line!r}. End of {log_path}:\n{log_tail}")
    return HubProcess(process, line.split(" ", 1)[1], root, log_path)


def hub_env(url: str, home: Path, base: dict | None = None) -> dict:
    """Return a copy of ``base`` (default os.environ) set up for the clients to use the stand-in at ``url``.

    Apply it before importing huggingface_hub, datasets or transformers, because they read these
    variables at import time. ``home`` becomes HF_HOME, which contains the token file and all caches.
    """
    env = dict(os.environ if base is None else base)
    for name in REMOVED_VARIABLES:
        env.pop(name, None)
    env.update({
        "HF_ENDPOINT": url,
        "HF_HUB_DISABLE_XET": "1",  # the stand-in has no Xet storage
        "HF_TOKEN": "hf_test_write",
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # else datasets sends a HEAD to s3.amazonaws.com on each load
        "DISABLE_SAFETENSORS_CONVERSION": "1",  # else transformers may call the conversion Space
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    })
    if any(env.get(name) for name in PROXY_VARIABLES):
        for name in ("NO_PROXY", "no_proxy"):
            env[name] = ",".join(filter(None, [env.get(name), "127.0.0.1", "localhost"]))
    return env


class HubControl:
    """Client for the stand-in's /__stub__ routes: fault injection and the request log."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        # An empty ProxyHandler keeps urllib from sending these requests through an HTTP(S)_PROXY.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, payload: dict | None = None):
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise RuntimeError(f"{method} {path} on the Hub stand-in failed with {error.code}: {detail}") from error

    def add_fault(
        self,
        path_regex: str,
        status: int = 503,
        *,
        method: str | None = None,
        count: int = 1,
        headers: dict | None = None,
        reset: bool = False,
    ) -> None:
        """Make the next ``count`` requests whose path matches ``path_regex`` fail.

        They get ``status`` with ``headers``, or with ``reset=True`` the connection is dropped
        without a response. ``method`` None matches every method.
        """
        fault = {
            "method": method, "path_regex": path_regex, "status": status,
            "count": count, "headers": headers or {}, "reset": reset,
        }
        self._request("POST", "/__stub__/faults", fault)

    def clear_faults(self) -> None:
        self._request("DELETE", "/__stub__/faults")

    def request_log(self) -> list[dict]:
        """Return the recent requests, oldest first, as dicts with method, path, status and user."""
        return self._request("GET", "/__stub__/log")

    def clear_request_log(self) -> None:
        self._request("DELETE", "/__stub__/log")


def _is_local_host(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port) requests a local wildcard address
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).strip("[]").split("%")[0]
    if host.lower() == "localhost":
        return True  # RFC 6761 reserves the name for the loopback addresses
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address in ipaddress.ip_network("127.0.0.0/8") or address == ipaddress.IPv6Address("::1")


class SocketGuard:
    """Reject and record every name lookup and connection outside 127.0.0.0/8 and ::1.

    ``attempts`` lists the rejected ``host:port`` strings. The checks run before the original
    functions, so a rejected host is never contacted.
    """

    def __init__(
        self, getaddrinfo=socket.getaddrinfo, connect=socket.socket.connect, connect_ex=socket.socket.connect_ex
    ):
        self.attempts: list[str] = []
        self._getaddrinfo = getaddrinfo
        self._connect = connect
        self._connect_ex = connect_ex

    def _reject(self, host, port) -> None:
        self.attempts.append(f"{host}:{port}")
        raise OSError(f"Network access to {host}:{port} is blocked in tests; only 127.0.0.1 and ::1 are allowed")

    def getaddrinfo(self, host, port, *args, **kwargs):
        if not _is_local_host(host):
            self._reject(host, port)
        return self._getaddrinfo(host, port, *args, **kwargs)

    def connect(self, sock: socket.socket, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local_host(address[0]):
            self._reject(address[0], address[1])
        return self._connect(sock, address)

    def connect_ex(self, sock: socket.socket, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local_host(address[0]):
            self._reject(address[0], address[1])
        return self._connect_ex(sock, address)


_installed_guard: SocketGuard | None = None


def install_socket_guard() -> list[str]:
    """Install a SocketGuard into the socket module once, and return its list of rejected attempts."""
    global _installed_guard
    if _installed_guard is None:
        guard = SocketGuard()
        socket.getaddrinfo = guard.getaddrinfo
        socket.socket.connect = lambda sock, address: guard.connect(sock, address)
        socket.socket.connect_ex = lambda sock, address: guard.connect_ex(sock, address)
        _installed_guard = guard
    return _installed_guard.attempts

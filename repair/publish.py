"""Assemble the three repos of a run, render their cards, and push them or write them to disk.

The repos are linked so that the Hub draws original -> quantized -> adapter: the quantized
card names the original as ``base_model`` (relation ``quantized``), the adapter card and its
``adapter_config.json`` name the quantized repo (relation ``adapter``).
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from dataclasses import asdict, dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Literal

from repair.config import PublishConfig, check_repo_name
from repair.errors import HubError, StageError
from repair.pipeline import Run
from repair.retry import call_with_retries
from repair.silver import SilverRecord, load_records, preference_records
from repair.steps import PROMPT_TEMPLATE, format_solution

log = logging.getLogger(__name__)

RepoKind = Literal["quantized", "dataset", "adapter", "merged"]
# Upload order: each card links the ones before. The merged checkpoint exists only for runs with --merge.
REPO_KINDS: tuple[RepoKind, ...] = ("quantized", "dataset", "adapter", "merged")

# Benchmarks whose local copies are recognised by folder or file name, for card metadata.
KNOWN_DATASETS = {"gsm8k": ("openai/gsm8k", "GSM8K", "mit")}
METHOD_NAMES = {"gptq": "GPTQ", "awq": "AWQ", "rtn": "round-to-nearest (RTN)", "smoothquant": "SmoothQuant W8A8"}
VERSIONED_PACKAGES = ("torch", "transformers", "llmcompressor", "compressed-tensors", "peft", "trl")


@dataclass
class RepoPlan:
    kind: RepoKind
    repo_id: str
    repo_type: Literal["model", "dataset"]
    folder: Path
    external: bool = False  # an existing Hub repo the run pulled: linked to, never uploaded

    @property
    def url_path(self) -> str:
        return ("datasets/" if self.repo_type == "dataset" else "") + self.repo_id


def dataset_metadata(spec: str) -> tuple[str | None, str, str | None]:
    """Return (Hub id, display name, license) of the benchmark a run used, when it is known."""
    lowered = spec.lower()
    for key, (hub_id, name, license_id) in KNOWN_DATASETS.items():
        if key in lowered:
            return hub_id, name, license_id
    if "/" in spec and not Path(spec).exists():
        return spec, spec, None
    return None, Path(spec).name, None


def library_versions() -> str:
    found = []
    for package in VERSIONED_PACKAGES:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def plan_repos(run: Run, namespace: str, name_prefix: str | None, root: Path) -> dict[RepoKind, RepoPlan]:
    stem = check_repo_name(name_prefix or run.config.slug(), "--name")
    names = {"quantized": stem, "dataset": f"{stem}-silver-bullet", "adapter": f"{stem}-repair-lora",
             "merged": f"{stem}-repaired"}
    kinds = [kind for kind in REPO_KINDS if kind != "merged" or (run.root / "merged").is_dir()]
    plans = {
        kind: RepoPlan(kind=kind, repo_id=f"{namespace}/{check_repo_name(names[kind], '--name')}",
                       repo_type="dataset" if kind == "dataset" else "model", folder=root / names[kind])
        for kind in kinds
    }
    pulled = run.stage_summary("quantize").get("pulled_from")
    if pulled:
        plans["quantized"] = RepoPlan(kind="quantized", repo_id=pulled, repo_type="model", folder=root / names["quantized"],
                                      external=True)
    return plans


def _template(name: str) -> str:
    return str(resources.files("hub_templates") / name)


def build_repo_folders(run: Run, plans: dict[RepoKind, RepoPlan], command: str) -> None:
    """Write each repo's files, exactly as they will be uploaded, into its plan's folder."""
    from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

    for stage in ("quantize", "silver", "restore", "verify"):
        if not run.is_done(stage):
            raise StageError(f"stage {stage} has not finished in {run.root}", "Run the pipeline first", stage="publish")

    config = run.config
    prepared = run.stage_summary("prepare")
    silver = run.stage_summary("silver")
    trained = run.stage_summary("restore")
    verified = json.loads((run.root / "verify.json").read_text())
    models = verified["models"]

    original = prepared["model"]["hub_id"]
    license_id = prepared["model"]["license"]
    dataset_id, dataset_name, dataset_license = dataset_metadata(config.dataset)
    method_name = METHOD_NAMES[config.method]
    device = f"{platform.machine()} CPU" if not _has_cuda() else "GPU"
    common = {
        "bits": config.bits, "method_name": method_name, "original_model": original or config.model,
        "command": command, "device": device, "test_problems": models["reference"]["problems"],
        "eval_dataset": dataset_name, "fp": models["reference"], "q": models["quantized"], "r": models["repaired"],
    }
    if original is None:
        log.warning("The model has no Hub id, so the quantized card cannot name a base_model")
    if license_id is None:
        log.warning("The model's license is unknown; the cards leave it out rather than guess")

    for plan in plans.values():
        if plan.folder.exists():
            shutil.rmtree(plan.folder)
        if not plan.external:
            plan.folder.mkdir(parents=True)

    # Quantized checkpoint, unless it was pulled from the Hub
    q_plan = plans["quantized"]
    if not q_plan.external:
        _build_quantized_folder(run, q_plan, plans["adapter"].repo_id, common)

    # Silver Bullet dataset, with an sft and a dpo configuration
    d_plan = plans["dataset"]
    counts = write_dataset_configs(load_records(run.silver_dir), d_plan.folder)
    records = silver["records"]
    size_category = "n<1K" if records < 1000 else "1K<n<10K"
    dataset_card = DatasetCardData(
        pretty_name=f"Silver Bullet records for {q_plan.repo_id.split('/')[1]}", license=dataset_license,
        language=["en"], task_categories=["text-generation"], tags=["math", "quantization", "repair", "silver-bullet"],
        size_categories=[size_category], source_datasets=[dataset_id] if dataset_id else None,
        annotations_creators=["machine-generated"],
        configs=[{"config_name": name, "data_files": [{"split": "train", "path": path}], **({"default": True} if name == "sft" else {})}
                 for name, path in DATASET_CONFIGS.items()],
    )
    dropped = prepared["data"]["train"]["dropped"]
    DatasetCard.from_template(
        dataset_card, template_path=_template("dataset_card.md.j2"),
        quantized_repo=q_plan.repo_id, source=f"{dataset_name} ({config.dataset})",
        train_pool=prepared["data"]["train_pool"], frontiers_available=silver["frontiers_available"],
        records=records, budget=silver["budget"], selection=silver.get("selection", "frontier"),
        sft_rows=counts["sft"], dpo_rows=counts["dpo"],
        dropped_text=", ".join(f"{n} {why}" for why, n in dropped.items()) or "none",
        selection_dropped_text=", ".join(f"{n} {why}" for why, n in silver.get("dropped", {}).items()) or "none",
        notes_text=", ".join(f"{n} {why}" for why, n in silver["notes"].items()) or "none",
        step_histogram=silver["step_histogram"], error_types=silver["error_types"], **common,
    ).save(d_plan.folder / "README.md")

    # LoRA adapter
    a_plan = plans["adapter"]
    for item in run.adapter_dir.iterdir():
        shutil.copy2(item, a_plan.folder / item.name)
    adapter_config = json.loads((a_plan.folder / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = q_plan.repo_id  # AutoPeftModel loads this base
    (a_plan.folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    eval_results = [
        EvalResult(task_type="text-generation", task_name="Teacher-forced math solutions",
                   dataset_type=dataset_id or d_plan.repo_id, dataset_name=dataset_name, dataset_split="test",
                   metric_type="nll", metric_name="held-out NLL per token (teacher-forced gold solutions)",
                   metric_value=models["repaired"]["nll"]),
        EvalResult(task_type="text-generation", task_name="Teacher-forced math solutions",
                   dataset_type=dataset_id or d_plan.repo_id, dataset_name=dataset_name, dataset_split="test",
                   metric_type="accuracy", metric_name="held-out top-1 token agreement",
                   metric_value=models["repaired"]["top1_agreement"]),
    ]
    card_data = ModelCardData(
        base_model=q_plan.repo_id, base_model_relation="adapter", library_name="peft", pipeline_tag="text-generation",
        license=license_id, datasets=[d_plan.repo_id] + ([dataset_id] if dataset_id else []),
        tags=["lora", config.method, f"{config.bits}-bit", "math", "repair"],
        model_name=a_plan.repo_id, eval_results=eval_results,
    )
    gap = verified["gap_closed"]
    ModelCard.from_template(
        card_data, template_path=_template("adapter_card.md.j2"), repo_id=a_plan.repo_id,
        repo_name=a_plan.repo_id.split("/")[1], base_model=q_plan.repo_id, dataset_repo=d_plan.repo_id,
        records=trained["records_trained"], records_too_long=trained["records_too_long"],
        flips=verified["flips"], gap_closed_text=f"{gap:.1%}" if gap is not None else "n/a (no gap)",
        objective_text=OBJECTIVE_TEXT[config.objective], selection=config.selection,
        margins=verified.get("frontier_margins", {}), control=models.get("control"), nll_drop=verified.get("nll_drop"),
        general=verified.get("general_text"), lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
        learning_rate=config.learning_rate, epochs=config.epochs, batch_size=config.batch_size,
        max_length=config.max_length, optimizer_steps=trained["optimizer_steps"], loss_first=trained["loss_first"],
        loss_last=trained["loss_last"], train_seconds=trained["seconds"],
        prompt_format="<chat template>\nuser: " + PROMPT_TEMPLATE + "\nassistant: "
                      + format_solution(["...", "..."], "<answer>"),
        **common,
    ).save(a_plan.folder / "README.md")

    # Merged checkpoint (--merge)
    if "merged" in plans:
        _build_merged_folder(run, plans, verified, common)

    check_repo_folders(plans)


OBJECTIVE_TEXT = {
    "sft": "SFT, loss on the target step only",
    "dpo": "DPO, the target step preferred over the quantized model's own step (reference: the quantized model)",
    "sft+dpo": "SFT on the target step, then DPO on the same adapter",
}
DATASET_CONFIGS = {"sft": "sft/train-00000-of-00001.parquet", "dpo": "dpo/train-00000-of-00001.parquet"}


def write_dataset_configs(records: list[SilverRecord], folder: Path) -> dict[str, int]:
    """Write the records as the dataset repo's two configurations and return their row counts.

    sft: every record, with TRL's prompt/completion columns. dpo: the records whose rejected step
    exists and differs from the chosen one, with TRL's prompt/chosen/rejected columns. Both keep
    the provenance columns (problem, step, selection, margins).
    """
    from datasets import Dataset

    sft = [{"prompt": r.prompt, "completion": " " + r.chosen, **asdict(r)} for r in records]
    dpo = [{**asdict(r), "prompt": r.prompt, "chosen": " " + r.chosen, "rejected": " " + r.rejected}
           for r in preference_records(records)]
    for name, rows in (("sft", sft), ("dpo", dpo)):
        path = folder / DATASET_CONFIGS[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        if rows:
            Dataset.from_list(rows).to_parquet(str(path))
        else:
            _write_empty_parquet(path)
    return {"sft": len(sft), "dpo": len(dpo)}


def _write_empty_parquet(path: Path) -> None:
    """Write a file with no rows, so that a configuration the card declares still loads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field(name, pa.string()) for name in ("prompt", "chosen", "rejected", "problem_id")]
    pq.write_table(pa.Table.from_pylist([], schema=pa.schema(fields)), path)


def _build_quantized_folder(run: Run, q_plan: RepoPlan, adapter_repo: str, common: dict) -> None:
    """Copy the checkpoint the run made and render its card."""
    from huggingface_hub import ModelCard, ModelCardData

    config = run.config
    prepared = run.stage_summary("prepare")
    quantized = run.stage_summary("quantize")
    original = prepared["model"]["hub_id"]
    license_id = prepared["model"]["license"]
    dataset_name = common["eval_dataset"]
    for item in run.quantized_dir.iterdir():
        shutil.copy2(item, q_plan.folder / item.name)
    tags = [config.method, "compressed-tensors", f"{config.bits}-bit", "llm-compressor", "repair"]
    card_data = ModelCardData(base_model=original, base_model_relation="quantized" if original else None,
                              library_name="transformers", pipeline_tag="text-generation",
                              license=license_id, tags=tags)
    source_note = None
    if prepared["model"]["gguf_file"]:
        source_note = f"dequantized to float32 from the GGUF file {prepared['model']['gguf_file']}"
    calibration = (f"{quantized['calibration_samples']} training-split problems of {dataset_name}, "
                   f"at most {config.calibration_length} tokens each" if config.method != "rtn" else "none (round-to-nearest)")
    if config.method == "smoothquant":
        weights_text, activations_text = "int8, symmetric, one scale per output channel", "int8, dynamic, one scale per token"
    else:
        symmetry = "asymmetric" if config.method == "awq" else "symmetric"
        weights_text = f"int{config.bits}, {symmetry}, group size {quantized['group_size']}"
        activations_text = "not quantized (weight-only)"
    ModelCard.from_template(
        card_data, template_path=_template("quantized_card.md.j2"), weights_text=weights_text,
        activations_text=activations_text, repo_id=q_plan.repo_id,
        repo_name=q_plan.repo_id.split("/")[1], base_model=original or config.model, group_size=quantized["group_size"],
        group_size_reason=quantized["group_size_reason"], ignored_layers=", ".join(config.ignore), calibration=calibration,
        quantize_seconds=quantized["seconds"], checkpoint_mb=round(quantized["checkpoint_bytes"] / 1e6, 1),
        source_note=source_note, versions=library_versions(), recipe=quantized["recipe"],
        adapter_repo=adapter_repo, **common,
    ).save(q_plan.folder / "README.md")


def _build_merged_folder(run: Run, plans: dict[RepoKind, RepoPlan], verified: dict, common: dict) -> None:
    """Copy the re-quantized checkpoint with the adapter folded in and render its card."""
    from huggingface_hub import ModelCard, ModelCardData

    config = run.config
    m_plan = plans["merged"]
    for item in (run.root / "merged").iterdir():
        shutil.copy2(item, m_plan.folder / item.name)
    original = run.stage_summary("prepare")["model"]["hub_id"]
    card_data = ModelCardData(base_model=original, base_model_relation="quantized" if original else None,
                              library_name="transformers", pipeline_tag="text-generation",
                              license=run.stage_summary("prepare")["model"]["license"],
                              tags=[config.method, "compressed-tensors", f"{config.bits}-bit", "math", "repair", "merged-lora"])
    merged = verified["merged"]
    ModelCard.from_template(
        card_data, template_path=_template("merged_card.md.j2"), repo_name=m_plan.repo_id.split("/")[1],
        adapter_repo=plans["adapter"].repo_id, quantized_repo=plans["quantized"].repo_id, merged=merged,
        flips=verified["flips"], checkpoint_mb=round(merged["checkpoint_bytes"] / 1e6, 1), **common,
    ).save(m_plan.folder / "README.md")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def check_repo_folders(plans: dict[RepoKind, RepoPlan]) -> None:
    """Check that every card's front matter parses and that the base_model chain is right."""
    from huggingface_hub import metadata_load

    meta = {}
    for kind, plan in plans.items():
        if plan.external:
            continue
        try:
            meta[kind] = metadata_load(plan.folder / "README.md") or {}
        except Exception as error:  # yaml raises several error types for broken front matter
            raise StageError(f"the {kind} card has invalid front matter: {error}", "Report this as a bug", stage="publish") from error
    adapter_base = json.loads((plans["adapter"].folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    quantized_id = plans["quantized"].repo_id
    if meta["adapter"].get("base_model") != quantized_id or adapter_base != quantized_id:
        raise StageError("the adapter card or adapter_config.json does not name the quantized repo as its base",
                         "Report this as a bug", stage="publish")
    if plans["dataset"].repo_id not in meta["adapter"].get("datasets", []):
        raise StageError("the adapter card does not list the Silver Bullet dataset", "Report this as a bug", stage="publish")


def resolve_namespace(publish: PublishConfig) -> str:
    """Return the namespace to publish under: the one given, or the token's user."""
    if publish.namespace:
        return publish.namespace
    token = _token(publish)
    if token is None:
        if publish.push:
            raise HubError("no Hub token found", "Log in with `hf auth login`, set HF_TOKEN, or pass --token")
        return "local"
    return _whoami(token)["name"]


def _token(publish: PublishConfig) -> str | None:
    from huggingface_hub import get_token

    return publish.token or get_token()


def _whoami(token: str) -> dict:
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return call_with_retries(HfApi(token=token).whoami, "token check")
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubError("the Hub token is invalid or expired", "Create a new token with write access and pass it with --token or HF_TOKEN") from error
        raise HubError(f"the Hub rejected the token check: {_short(error)}", "Check the network, then rerun") from error
    except (OSError, httpx.HTTPError) as error:
        raise HubError(f"cannot reach the Hub: {_short(error)}", "Check the network, then rerun; the run folder keeps all results") from error


def _short(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def check_write_access(token: str, namespace: str) -> None:
    """Raise ``HubError`` before any upload if the token cannot write to ``namespace``."""
    identity = _whoami(token)
    role = identity.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise HubError("the Hub token is read-only", "Create a token with write access and pass it with --token or HF_TOKEN")
    allowed = {identity.get("name")} | {org.get("name") for org in identity.get("orgs", [])}
    if namespace not in allowed:
        raise HubError(f"the token's user {identity.get('name')} cannot write to namespace {namespace}",
                       f"Pass --namespace with one of: {', '.join(sorted(n for n in allowed if n))}")


def push_repos(plans: dict[RepoKind, RepoPlan], token: str, private: bool) -> dict[RepoKind, str]:
    """Create each repo and upload its folder in a single commit, so no repo is left half-written."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    urls: dict[RepoKind, str] = {}
    for kind in [kind for kind in REPO_KINDS if kind in plans]:
        plan = plans[kind]
        if plan.external:
            urls[kind] = f"{api.endpoint}/{plan.url_path}"
            continue
        try:
            call_with_retries(lambda: api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=private,
                                                      exist_ok=True), "repo creation", plan.repo_id)
            commit = call_with_retries(
                lambda: api.upload_folder(repo_id=plan.repo_id, repo_type=plan.repo_type, folder_path=plan.folder,
                                          commit_message=f"Upload {kind} from repair"),
                "upload", plan.repo_id)
        except HfHubHTTPError as error:
            status = error.response.status_code if error.response is not None else None
            fix = ("Check that the token may write to this namespace" if status in (401, 403)
                   else "Rerun the same command: finished stages are kept and uploads are single commits")
            raise HubError(f"upload of {plan.repo_id} failed: {_short(error)}", fix, repo_id=plan.repo_id) from error
        except (OSError, httpx.HTTPError) as error:
            raise HubError(f"upload of {plan.repo_id} failed: {_short(error)}", "Check the network, then rerun the same command",
                           repo_id=plan.repo_id) from error
        urls[kind] = f"{api.endpoint}/{plan.url_path}"
        log.info("Published %s at %s (%s)", kind, urls[kind], commit.oid if hasattr(commit, "oid") else commit)
    return urls


def export_folders(plans: dict[RepoKind, RepoPlan], output: Path) -> dict[RepoKind, Path]:
    """Copy the repo folders into ``output``, one folder per repo, named after the repo."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        paths = {}
        for kind, plan in plans.items():
            if plan.external:
                continue
            target = output / plan.folder.name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(plan.folder, target)
            paths[kind] = target
        return paths
    except OSError as error:
        raise HubError(f"cannot write the repo folders to {output}: {error.strerror}",
                       "Pass --output with a writable folder that has free space") from error


def preflight(publish_config: PublishConfig) -> str:
    """Check the token and namespace before any work; return the namespace to publish under."""
    namespace = resolve_namespace(publish_config)
    if publish_config.push:
        token = _token(publish_config)
        if token is None:
            raise HubError("no Hub token found", "Log in with `hf auth login`, set HF_TOKEN, or pass --token")
        check_write_access(token, namespace)
    return namespace


def publish(run: Run, publish_config: PublishConfig, command: str) -> dict:
    """Build, check and push (or export) the three repos of a finished run."""
    # Check the token again: a run takes long enough for a token to be revoked.
    namespace = preflight(publish_config)
    token = _token(publish_config)

    # Build the folders in the run folder, then push or copy them
    plans = plan_repos(run, namespace, publish_config.name_prefix, run.root / "publish")
    build_repo_folders(run, plans, command)
    result: dict = {"repos": {kind: plan.repo_id for kind, plan in plans.items()}}
    if publish_config.output is not None:
        result["folders"] = {kind: str(path) for kind, path in export_folders(plans, publish_config.output).items()}
    if publish_config.push:
        result["urls"] = push_repos(plans, token, publish_config.private)
    return result

"""Typed configuration of a repair run, checked before any heavy work starts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from repair.errors import ConfigError

Method = Literal["gptq", "awq", "rtn", "smoothquant"]
Objective = Literal["sft", "dpo", "sft+dpo"]
Selection = Literal["frontier", "random", "all"]
Stage = Literal["prepare", "quantize", "measure", "locate", "silver", "restore", "verify"]

METHODS: tuple[str, ...] = get_args(Method)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
SELECTIONS: tuple[str, ...] = get_args(Selection)
STAGES: tuple[str, ...] = get_args(Stage)
SUPPORTED_BITS = (2, 3, 4, 8)

# The Hub's rule for a repo name: letters, digits, '-', '_', '.', at most 96 characters,
# and no leading or trailing '-' or '.'.
_REPO_NAME = re.compile(r"^(?![-.])[A-Za-z0-9_.-]{1,96}(?<![-.])$")
# A Hub repo id: namespace/name, each part made of the characters above.
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _help(text: str, **kwargs) -> dict:
    return {"metadata": {"help": text}, **kwargs}


@dataclass
class RunConfig:
    """Everything that decides what a run computes. Two runs with equal fingerprints share results."""

    model: str = field(**_help("Hub model id, local folder, local .gguf file, or a built-in alias such as smollm2-135m."))
    bits: int = field(**_help("Weight bit-width of the quantized model: 2, 3, 4 or 8."))
    method: Method = field(default="gptq", **_help(
        "Quantization method: gptq, awq, rtn (round-to-nearest, no calibration) or smoothquant (W8A8, --bits 8 only)."))
    group_size: int | None = field(
        default=None, **_help("Quantization group size; None picks the largest of 128, 64, 32 that divides every layer.")
    )
    ignore: list[str] = field(default_factory=lambda: ["lm_head"], **_help(
        "Layers left unquantized: full module names, class names, or re:PATTERN."))
    pull: bool = field(default=True, **_help("Use a matching quantized checkpoint of the same base from the Hub when one exists."))
    quantized_repo: str | None = field(default=None, **_help("Hub id of a quantized checkpoint to use instead of searching or quantizing."))
    dataset: str = field(default="openai/gsm8k", **_help("Hub dataset id, or a local .jsonl/.json/.parquet file or folder."))
    dataset_config: str | None = field(default=None, **_help("Hub dataset configuration name, for example 'main' for openai/gsm8k."))
    # Calibration time grows with samples x length: 32 x 256 keeps GPTQ on a 135M model to a few
    # minutes on 2 CPU cores.
    calibration_samples: int = field(default=32, **_help("Number of training-split problems used to calibrate GPTQ, AWQ and SmoothQuant."))
    calibration_length: int = field(default=256, **_help("Maximum tokens per calibration sample."))
    # The pool that failures are located in; the Silver Bullet set is drawn from it.
    train_problems: int = field(default=350, **_help("Training-split problems scored to locate failures."))
    test_problems: int = field(default=100, **_help("Held-out test-split problems used for verification."))
    budget: int = field(default=332, **_help("Maximum number of Silver Bullet records to train on."))
    selection: Selection = field(default="frontier", **_help(
        "Steps to train on: frontier (first faulty steps, earliest first), random (random steps of the same problems, "
        "the baseline) or all (every step of the problems, in order)."))
    objective: Objective = field(default="sft", **_help(
        "Training objective: sft (loss on the chosen step only), dpo (chosen versus the quantized model's own step) "
        "or sft+dpo (sft, then dpo on the same adapter)."))
    dpo_beta: float = field(default=0.1, **_help("DPO beta: how far the adapter may move from the quantized model."))
    control: bool = field(default=False, **_help(
        "Also train the same adapter on the full-precision model, to separate repair from domain adaptation."))
    merge: bool = field(default=False, **_help(
        "Also fold the adapter into the weights, quantize again with the same recipe, and verify that checkpoint."))
    general_text: str | None = field(default=None, **_help(
        "Plain-text file of non-math text whose NLL is compared across the models, to catch damage to general language."))
    lora_rank: int = field(default=16, **_help("LoRA rank r."))
    lora_alpha: int = field(default=32, **_help("LoRA scaling alpha."))
    learning_rate: float = field(default=2e-4, **_help("Peak learning rate of the adapter."))
    epochs: float = field(default=1.0, **_help("Passes over the Silver Bullet set."))
    batch_size: int = field(default=4, **_help("Training batch size in records."))
    max_length: int = field(default=512, **_help("Maximum tokens of prompt plus step in training; longer records are dropped and counted."))
    generated_problems: int = field(default=30, **_help(
        "Held-out problems solved by generation to compare accuracy; the quantized and repaired models are "
        "generated only when the full-precision model solves enough of them to make accuracy meaningful. 0 skips it."))
    eval_batch_size: int = field(default=8, **_help("Problems per forward pass when scoring."))
    seed: int = field(default=0, **_help("Random seed for sampling, shuffling and adapter initialisation."))

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ConfigError(
                f"--bits {self.bits} is not supported",
                f"Use one of {', '.join(map(str, SUPPORTED_BITS))}",
            )
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} is not supported", f"Use one of {', '.join(METHODS)}")
        if self.method == "smoothquant" and self.bits != 8:
            raise ConfigError(f"--method smoothquant quantizes weights and activations to 8 bits, not {self.bits}",
                              "Use --bits 8 with smoothquant, or --method gptq, awq or rtn for fewer bits")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective {self.objective!r} is not supported", f"Use one of {', '.join(OBJECTIVES)}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"--selection {self.selection!r} is not supported", f"Use one of {', '.join(SELECTIONS)}")
        if self.dpo_beta <= 0:
            raise ConfigError(f"--dpo-beta must be positive, got {self.dpo_beta}", "Pass a value such as 0.1")
        if self.general_text is not None and not Path(self.general_text).is_file():
            raise ConfigError(f"--general-text {self.general_text} is not a file", "Pass a plain-text file of non-math text")
        if self.method == "smoothquant" and self.group_size is not None:
            raise ConfigError("--group-size does not apply to smoothquant, which scales each output channel",
                              "Leave --group-size unset")
        if self.group_size is not None and self.group_size <= 0:
            raise ConfigError(f"--group-size {self.group_size} is invalid", "Give a positive number such as 64, or leave it unset")
        if self.generated_problems < 0:
            raise ConfigError(f"--generated-problems must be 0 or more, got {self.generated_problems}",
                              "Pass 0 to skip generated accuracy, or a positive count")
        for name in ("calibration_samples", "calibration_length", "train_problems", "test_problems", "budget",
                     "lora_rank", "batch_size", "max_length", "eval_batch_size"):
            value = getattr(self, name)
            if value <= 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be positive, got {value}", f"Pass a positive {flag}")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("--epochs and --learning-rate must be positive", "Pass positive values")
        if not self.model.strip():
            raise ConfigError("the model is empty", "Pass a Hub model id, a local folder, a .gguf file or smollm2-135m")
        if self.quantized_repo is not None and (not _REPO_ID.match(self.quantized_repo) or ".." in self.quantized_repo):
            raise ConfigError(f"--quantized {self.quantized_repo!r} is not a valid Hub repo id",
                              "Give the id of a quantized model repo as namespace/name")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Return a short hash of every field, used to refuse a run folder made with other settings."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def slug(self) -> str:
        """Return a folder-safe name such as ``smollm2-135m-gptq-w3``."""
        base = Path(self.model.rstrip("/")).name.removesuffix(".gguf") or "model"
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.") or "model"
        return f"{base}-{self.method}-w{self.bits}"


@dataclass
class PublishConfig:
    """Destination and options for publishing the three repos of a run."""

    namespace: str | None = field(default=None, **_help("Hub user or organisation to publish under; defaults to the token's user."))
    private: bool = field(default=False, **_help("Create the repos as private."))
    push: bool = field(default=True, **_help("Upload to the Hub; with False, only write the repo folders."))
    output: Path | None = field(default=None, **_help("Folder that receives a copy of the three repo folders."))
    token: str | None = field(default=None, repr=False, **_help("Hub token; defaults to HF_TOKEN or the saved login."))
    name_prefix: str | None = field(default=None, **_help("Repo name stem; defaults to '<model>-<method>-w<bits>'."))

    def __post_init__(self) -> None:
        if self.namespace is not None and not _REPO_NAME.match(self.namespace):
            raise ConfigError(
                f"--namespace {self.namespace!r} is not a valid Hub user or organisation name",
                "Use letters, digits, '-', '_' or '.'",
            )
        if self.name_prefix is not None:
            check_repo_name(self.name_prefix, "--name")
        if not self.push and self.output is None:
            raise ConfigError("--no-push needs --output", "Pass --output DIR to receive the repo folders")


def check_repo_name(name: str, flag: str) -> str:
    """Raise ``ConfigError`` unless ``name`` is a repo name the Hub accepts."""
    if not _REPO_NAME.match(name) or "--" in name or ".." in name:
        raise ConfigError(
            f"{flag} {name!r} is not a valid Hub repo name",
            "Use at most 96 letters, digits, '-', '_' or '.', not starting or ending with '-' or '.'",
        )
    return name

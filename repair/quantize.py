"""Quantize the reference model with llm-compressor and load checkpoints for scoring or training."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from repair.config import Method
from repair.errors import ConfigError, StageError
from repair.progress import ProgressCallback
from repair.steps import Problem, build_prompt, format_solution

log = logging.getLogger(__name__)

# llm-compressor and compressed-tensors each add a loguru sink on stdout when imported, which
# would mix their INFO lines into the results the CLI prints there. Disabled before their import,
# they add none; route_llmcompressor_logs() then sends llm-compressor's warnings to stderr.
os.environ.setdefault("LLM_COMPRESSOR_LOG_DISABLED", "true")
os.environ.setdefault("COMPRESSED_TENSORS_LOG_DISABLED", "true")

GROUP_SIZE_CANDIDATES = (128, 64, 32, 16)
IGNORED_LAYERS = ("lm_head",)  # the output head stays in full precision, as llm-compressor's examples do
SMOOTHING_STRENGTH = 0.8  # SmoothQuant's alpha: the share of activation outliers moved into the weights
CALIBRATED_METHODS = ("gptq", "awq", "smoothquant")


@dataclass
class QuantizeResult:
    method: Method
    bits: int
    group_size: int
    group_size_reason: str
    calibration_samples: int
    seconds: float
    recipe: str


def is_ignored(name: str, module, ignore: tuple[str, ...] | list[str]) -> bool:
    """Return whether a layer matches an entry of ``ignore`` the way llm-compressor matches them.

    An entry matches a full module name, a module class name, or, written ``re:PATTERN``, the
    names that the regular expression matches from their start.
    """
    for entry in ignore:
        if entry.startswith("re:"):
            if re.match(entry[3:], name):
                return True
        elif entry in (name, type(module).__name__):
            return True
    return False


def check_ignore(model, ignore: tuple[str, ...] | list[str]) -> None:
    """Raise ``ConfigError`` for an --ignore entry that matches no linear layer, or one that leaves none to quantize."""
    import torch

    linear = [(name, module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    for entry in ignore:
        if not any(is_ignored(name, module, [entry]) for name, module in linear):
            raise ConfigError(f"--ignore {entry} matches no linear layer of the model",
                              f"Give a full layer name such as {linear[-1][0]}, a class name, or re:PATTERN")
    if all(is_ignored(name, module, ignore) for name, module in linear):
        raise ConfigError("--ignore leaves no linear layer to quantize", "Ignore fewer layers")


def linear_widths(model, ignore: tuple[str, ...] | list[str] = IGNORED_LAYERS) -> dict[str, int]:
    """Return the input width of every linear layer that will be quantized."""
    import torch

    return {
        name: module.in_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not is_ignored(name, module, ignore)
    }


def choose_group_size(model, requested: int | None,
                      ignore: tuple[str, ...] | list[str] = IGNORED_LAYERS) -> tuple[int, str]:
    """Pick a group size that divides every quantized layer's input width; return it with the reason."""
    widths = linear_widths(model, ignore)
    if requested is not None:
        bad = sorted({width for width in widths.values() if width % requested})
        if bad:
            raise ConfigError(
                f"--group-size {requested} does not divide the layer widths {bad}",
                f"Use a divisor of {_gcd(widths.values())}, or leave --group-size unset",
            )
        return requested, f"group size {requested} as requested"
    for candidate in GROUP_SIZE_CANDIDATES:
        if all(width % candidate == 0 for width in widths.values()):
            reason = f"group size {candidate}: the largest of {GROUP_SIZE_CANDIDATES} that divides every layer width"
            if candidate != GROUP_SIZE_CANDIDATES[0]:
                reason += f" (widths include {sorted(set(widths.values()))})"
            return candidate, reason
    raise ConfigError(
        f"no group size in {GROUP_SIZE_CANDIDATES} divides the layer widths {sorted(set(widths.values()))}",
        "Pass --group-size with a divisor of every width",
    )


def _gcd(values) -> int:
    import math

    result = 0
    for value in values:
        result = math.gcd(result, value)
    return result


def build_recipe(method: Method, bits: int, group_size: int, ignore: tuple[str, ...] | list[str] = IGNORED_LAYERS) -> list:
    """Return the llm-compressor modifiers of a method, following llm-compressor's own example recipes.

    GPTQ and RTN: symmetric grouped integer weights. AWQ: asymmetric grouped weights after AWQ's
    activation-aware scaling. SmoothQuant: smoothing, then GPTQ to 8-bit weights (per channel)
    and 8-bit dynamic per-token activations (W8A8).
    """
    route_llmcompressor_logs()
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if method == "smoothquant":
        from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

        return [SmoothQuantModifier(smoothing_strength=SMOOTHING_STRENGTH),
                GPTQModifier(targets="Linear", scheme="W8A8", ignore=list(ignore))]

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=method != "awq", strategy="group",
                               group_size=group_size)
    groups = {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}
    if method == "gptq":
        return [GPTQModifier(config_groups=groups, ignore=list(ignore))]
    if method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier

        return [AWQModifier(duo_scaling="both"), QuantizationModifier(config_groups=groups, ignore=list(ignore))]
    return [QuantizationModifier(config_groups=groups, ignore=list(ignore))]


@contextlib.contextmanager
def cpu_pin_memory_workaround():
    """Skip llm-compressor's pin_memory() calls when no accelerator is present.

    llm-compressor 0.14.0.1's AWQ pins cached activations to speed up host-to-device copies, and
    pin_memory() raises on a CPU-only torch. Pinning does nothing useful without an accelerator,
    so it becomes a no-op there. Remove this once llm-compressor checks for an accelerator first.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        yield
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    try:
        yield
    finally:
        IntermediatesCache.pin_memory = original


def calibration_texts(tokenizer, problems: list[Problem]) -> list[str]:
    """Render calibration problems as full chat transcripts in the tool's step format."""
    return [build_prompt(tokenizer, p.question) + format_solution(p.steps, p.answer) for p in problems]


def quantize(reference_dir: Path, output_dir: Path, method: Method, bits: int, group_size: int | None,
             calibration: list[Problem], calibration_length: int,
             progress: ProgressCallback | None = None,
             ignore: tuple[str, ...] | list[str] = IGNORED_LAYERS) -> QuantizeResult:
    """Quantize the model saved in ``reference_dir`` and write a compressed-tensors checkpoint."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    from repair.sources import load_tokenizer

    # Load and choose the scheme
    model = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
    tokenizer = load_tokenizer(reference_dir)
    check_ignore(model, ignore)
    size, reason = choose_group_size(model, group_size, ignore)
    if method == "smoothquant":
        size, reason = 0, "no groups: SmoothQuant W8A8 uses one scale per output channel"
    recipe = build_recipe(method, bits, size, ignore)
    log.info("Quantizing with %s W%d, %s", method.upper(), bits, reason)

    # Calibrate (GPTQ) or round (RTN)
    if progress is not None:
        progress(f"quantize ({method} W{bits})", 0, 1)
    start = time.perf_counter()
    try:
        if method in CALIBRATED_METHODS:
            if not calibration:
                raise ConfigError(f"{method} needs calibration problems but the training split gave none",
                                  "Use a dataset with a train split, or --method rtn")
            texts = Dataset.from_dict({"text": calibration_texts(tokenizer, calibration)})
            with cpu_pin_memory_workaround():
                oneshot(model=model, recipe=recipe, dataset=texts, tokenizer=tokenizer,
                        num_calibration_samples=len(calibration), max_seq_length=calibration_length)
        else:
            oneshot(model=model, recipe=recipe)
    except (RuntimeError, ValueError) as error:
        raise StageError(f"llm-compressor failed to quantize with {method} W{bits}: {error}",
                         "Try another --group-size or --method", stage="quantize") from error
    seconds = time.perf_counter() - start

    # Save compressed
    model.save_pretrained(output_dir, save_compressed=True)
    tokenizer.save_pretrained(output_dir)
    if progress is not None:
        progress(f"quantize ({method} W{bits})", 1, 1)
    return QuantizeResult(method=method, bits=bits, group_size=size, group_size_reason=reason,
                          calibration_samples=len(calibration) if method in CALIBRATED_METHODS else 0,
                          seconds=round(seconds, 1), recipe=_saved_recipe(output_dir))


def _saved_recipe(checkpoint: Path) -> str:
    """Return the recipe.yaml that llm-compressor writes beside the checkpoint, or '' if it wrote none."""
    recipe = checkpoint / "recipe.yaml"
    return recipe.read_text() if recipe.is_file() else ""


def route_llmcompressor_logs() -> None:
    """Send llm-compressor's loguru output to stderr, warnings only unless REPAIR_DEBUG is set."""
    import sys

    import llmcompressor  # noqa: F401  (imported first so that its own logger setup has run)
    from loguru import logger

    logger.enable("llmcompressor")
    try:
        logger.level("METRIC")
    except ValueError:  # llm-compressor defines its METRIC level only when its logging is on
        logger.level("METRIC", no=38)
    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if os.environ.get("REPAIR_DEBUG") else "WARNING",
               format="{time:HH:mm:ss} llmcompressor: {message}")


def load_quantized(checkpoint: Path | str, for_training: bool = False):
    """Load a compressed-tensors checkpoint decompressed to dense float32 weights.

    PEFT has no LoRA layer for llm-compressor's packed weights. Decompressed, each linear
    layer contains weights on the quantization grid, and LoRA trains on top of them.
    """
    import torch
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, quantization_config=CompressedTensorsConfig(dequantize=True), dtype=torch.float32
    )
    if not for_training:
        model.eval()
    return model


def dry_run_report(config, token: str | None = None) -> str:
    """Describe what a run would do, without loading weights: recipe, pulled checkpoint, memory and disk."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from repair.sources import check_causal_lm, find_quantized, model_config, resolve_model_metadata

    # Read the config only: for a Hub model this downloads config.json, not the weights.
    source = resolve_model_metadata(config.model, token)
    check_causal_lm(source)
    model_settings = model_config(source)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(model_settings)
    empty.tie_weights()
    parameters = empty.num_parameters()
    check_ignore(empty, config.ignore)
    quantized_parameters = sum(width * out for width, out in _linear_shapes(empty, config.ignore))
    if config.method == "smoothquant":
        size, reason = 0, "per output channel (SmoothQuant)"
    else:
        size, reason = choose_group_size(empty, config.group_size, config.ignore)
    recipe = build_recipe(config.method, config.bits, size or 64, config.ignore)

    # Pull candidates
    lines = [f"model: {source.describe()} ({parameters / 1e6:.0f}M parameters, {type(empty).__name__})",
             f"recipe: {config.method} W{config.bits}, {reason}; left unquantized: {', '.join(config.ignore)}"]
    lines += [f"  {type(modifier).__name__}" for modifier in recipe]
    if config.quantized_repo:
        lines.append(f"quantized checkpoint: {config.quantized_repo} (named with --quantized)")
    elif config.pull and source.hub_id:
        try:
            found, candidates = find_quantized(source.hub_id, config.method, config.bits, token)
        except Exception as error:  # the dry run reports any lookup failure instead of stopping
            lines.append(f"quantized checkpoint: Hub search failed ({type(error).__name__}); would quantize locally")
        else:
            for candidate in candidates:
                lines.append(f"  candidate {candidate.repo_id}: {'usable' if candidate.usable else candidate.reason}")
            lines.append(f"quantized checkpoint: {'pull ' + found.repo_id if found else 'none found; would quantize locally'}")
    else:
        lines.append("quantized checkpoint: would quantize locally")

    # Estimates: float32 weights, a second copy while quantizing or training, and the files written.
    reference_bytes = parameters * 4
    quantized_bytes = (parameters - quantized_parameters) * 4 + quantized_parameters * config.bits / 8
    lines.append(f"memory estimate: {2 * reference_bytes / 1e9:.1f} GB peak (float32 weights twice, an estimate)")
    lines.append(f"disk estimate: {(reference_bytes + quantized_bytes) / 1e9:.2f} GB in the run folder "
                 f"(float32 reference {reference_bytes / 1e9:.2f} GB, quantized {quantized_bytes / 1e9:.2f} GB)")
    return "\n".join(lines)


def _linear_shapes(model, ignore: tuple[str, ...] | list[str]) -> list[tuple[int, int]]:
    import torch

    return [(module.in_features, module.out_features) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and not is_ignored(name, module, ignore)]

"""Train a LoRA adapter on the quantized model with TRL: SFT on the target step, step-level DPO, or both."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from repair.config import Objective
from repair.progress import ProgressCallback
from repair.silver import SilverRecord, preference_records
from repair.steps import encode_trace

log = logging.getLogger(__name__)

LORA_DROPOUT = 0.05
WARMUP_RATIO = 0.05  # share of optimizer steps spent warming up the learning rate


@dataclass
class TrainSettings:
    lora_rank: int
    lora_alpha: int
    learning_rate: float
    epochs: float
    batch_size: int
    max_length: int
    seed: int
    dpo_beta: float = 0.1


def training_rows(tokenizer, records: list[SilverRecord], max_length: int) -> tuple[list[dict], int]:
    """Tokenize records into ``input_ids`` and ``labels`` that cover only the chosen frontier step.

    Pre-tokenized rows make TRL train exactly the labelled span; with plain prompt/completion
    strings it would append EOS after every step. Records longer than ``max_length`` would be
    dropped by TRL without a word, so they are dropped and counted here.
    """
    rows, too_long = [], 0
    for record in records:
        if record.is_answer:
            trace = encode_trace(tokenizer, record.question, record.prefix, record.chosen, close_last=True)
        else:
            trace = encode_trace(tokenizer, record.question, [*record.prefix, record.chosen], None, close_last=True)
        start, end = trace.step_span(record.step_index)
        if end > max_length:
            too_long += 1
            continue
        ids = trace.input_ids[:end]
        rows.append({"input_ids": ids, "labels": [-100] * start + ids[start:end]})
    return rows, too_long


def _step_ids(tokenizer, record: SilverRecord, step: str):
    """Tokenize a record's prompt and prefix followed by ``step``; return the trace and the step's token range."""
    if record.is_answer:
        trace = encode_trace(tokenizer, record.question, record.prefix, step, close_last=True)
    else:
        trace = encode_trace(tokenizer, record.question, [*record.prefix, step], None, close_last=True)
    return trace.input_ids, trace.step_span(record.step_index)


def preference_rows(tokenizer, records: list[SilverRecord], max_length: int) -> tuple[list[dict], int]:
    """Tokenize records into TRL's pre-tokenized DPO columns: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``.

    The prompt is the chat prompt, the correct prefix and the step header, so chosen and rejected
    share it exactly. Both completions end with the step's newline and no EOS, unlike the
    string path of TRL's DPOTrainer, which appends EOS to every completion.
    """
    rows, too_long = [], 0
    for record in preference_records(records):
        chosen_ids, (start, chosen_end) = _step_ids(tokenizer, record, record.chosen)
        rejected_ids, (rejected_start, rejected_end) = _step_ids(tokenizer, record, record.rejected)
        if max(chosen_end, rejected_end) > max_length:
            too_long += 1
            continue
        # Both traces tokenize the same prompt and prefix piece by piece, so they share it exactly.
        assert rejected_start == start, "chosen and rejected steps start at different positions"
        assert rejected_ids[:start] == chosen_ids[:start], "chosen and rejected prompts differ"
        rows.append({"prompt_ids": chosen_ids[:start], "chosen_ids": chosen_ids[start:chosen_end],
                     "rejected_ids": rejected_ids[start:rejected_end]})
    return rows, too_long


def _trainer_settings(settings: TrainSettings, scratch: str) -> dict:
    """Return the TrainingArguments shared by the SFT and DPO configs. TRL defaults to bf16, which fails on CPU."""
    import torch

    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=scratch, per_device_train_batch_size=settings.batch_size, num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate, lr_scheduler_type="cosine", warmup_steps=WARMUP_RATIO,
        logging_steps=1, save_strategy="no", report_to=[], seed=settings.seed, max_length=settings.max_length,
        bf16=on_gpu and torch.cuda.is_bf16_supported(), use_cpu=not on_gpu, disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _progress_callback(progress: ProgressCallback | None, desc: str):
    from transformers import TrainerCallback

    class ForwardProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if progress is not None:
                progress(desc, state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.debug("%s step %d: %s", desc, state.global_step, logs)

    return ForwardProgress()


def _losses(trainer) -> tuple[float | None, float | None]:
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return (round(losses[0], 4), round(losses[-1], 4)) if losses else (None, None)


def _run_sft(model, tokenizer, rows: list[dict], settings: TrainSettings, peft_config, progress) -> tuple:
    import tempfile

    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    # Batches of records of similar length waste less compute on padding.
    args = SFTConfig(**_trainer_settings(settings, tempfile.mkdtemp(prefix="repair-trainer-")),
                     train_sampling_strategy="group_by_length")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[_progress_callback(progress, "train adapter (sft)")])
    # With tqdm off, the Trainer prints every log line to stdout, which is for results only.
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    first, last = _losses(trainer)
    return trainer.model, {"optimizer_steps": trainer.state.global_step, "loss_first": first, "loss_last": last}


def _run_dpo(model, tokenizer, rows: list[dict], settings: TrainSettings, peft_config, progress) -> tuple:
    import tempfile

    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    class StepDPOTrainer(DPOTrainer):
        """DPOTrainer that takes the rows as tokenized here, so no EOS is appended to a step."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    # With a PEFT model and no ref_model, TRL scores the reference with the adapter disabled:
    # that is the quantized model itself, whichever adapter state training starts from.
    args = DPOConfig(**_trainer_settings(settings, tempfile.mkdtemp(prefix="repair-trainer-")), beta=settings.dpo_beta)
    trainer = StepDPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[_progress_callback(progress, "train adapter (dpo)")])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    first, last = _losses(trainer)
    accuracies = [e["rewards/accuracies"] for e in trainer.state.log_history if "rewards/accuracies" in e]
    return trainer.model, {"optimizer_steps": trainer.state.global_step, "loss_first": first, "loss_last": last,
                           "reward_accuracy_last": round(accuracies[-1], 4) if accuracies else None}


def train_adapter(base_dir: Path, records: list[SilverRecord], output_dir: Path, settings: TrainSettings,
                  progress: ProgressCallback | None = None, objective: Objective = "sft",
                  base: Literal["quantized", "reference"] = "quantized") -> dict:
    """Train a LoRA adapter on a frozen base model and save it to ``output_dir``.

    ``base`` is the decompressed quantized checkpoint for a repair, or the full-precision model
    for the control adapter. ``sft+dpo`` trains SFT first, then DPO on the same adapter.
    """
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from repair.errors import StageError
    from repair.quantize import load_quantized
    from repair.sources import load_tokenizer

    # Load the frozen base and the data
    if base == "quantized":
        model = load_quantized(base_dir, for_training=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tokenizer = load_tokenizer(base_dir)
    sft_rows, sft_too_long = training_rows(tokenizer, records, settings.max_length) if "sft" in objective else ([], 0)
    dpo_rows, dpo_too_long = preference_rows(tokenizer, records, settings.max_length) if "dpo" in objective else ([], 0)
    if "sft" in objective and not sft_rows:
        raise StageError(f"no Silver Bullet record fits in --max-length {settings.max_length}",
                         "Raise --max-length or score more problems", stage="restore")
    if "dpo" in objective and not dpo_rows:
        raise StageError("no Silver Bullet record has a rejected step that differs from the chosen one, so DPO has no pairs",
                         "Use --objective sft, or --selection frontier, whose records carry the quantized model's own step",
                         stage="restore")

    peft_config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=LORA_DROPOUT,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    summary: dict = {"objective": objective, "base": base, "records_too_long": max(sft_too_long, dpo_too_long)}

    # Train: SFT, DPO, or SFT then DPO continuing the same adapter
    start = time.perf_counter()
    if sft_rows:
        model, summary["sft"] = _run_sft(model, tokenizer, sft_rows, settings, peft_config, progress)
        summary["sft"]["records"] = len(sft_rows)
        peft_config = None  # DPO below continues the adapter that SFT trained
    if dpo_rows:
        if peft_config is None:
            model.train()
        model, summary["dpo"] = _run_dpo(model, tokenizer, dpo_rows, settings, peft_config, progress)
        summary["dpo"]["records"] = len(dpo_rows)
    summary["seconds"] = round(time.perf_counter() - start, 1)

    # Save
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    summary["records_trained"] = max(len(sft_rows), len(dpo_rows))
    summary["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    first_stage = summary.get("sft") or summary["dpo"]
    last_stage = summary.get("dpo") or summary["sft"]
    summary["optimizer_steps"] = sum(summary[k]["optimizer_steps"] for k in ("sft", "dpo") if k in summary)
    summary["loss_first"], summary["loss_last"] = first_stage["loss_first"], last_stage["loss_last"]
    return summary


def load_repaired(quantized_dir: Path | str, adapter_dir: Path | str):
    """Load the decompressed quantized model with the adapter on top, unmerged, for scoring."""
    from peft import PeftModel

    from repair.quantize import load_quantized

    model = PeftModel.from_pretrained(load_quantized(quantized_dir), str(adapter_dir))
    model.eval()
    return model


def merge_adapter(quantized_dir: Path | str, adapter_dir: Path | str, output_dir: Path) -> None:
    """Fold the adapter into the decompressed quantized weights and save a dense float32 checkpoint.

    The merged weights are off the quantization grid, so the result must be quantized again to
    be a quantized checkpoint. The dense model is built from the config without its
    quantization_config, which would make save_pretrained try to compress the weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from repair.sources import load_tokenizer

    merged = load_repaired(quantized_dir, adapter_dir).merge_and_unload()
    config = merged.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # The decompressed layers still carry their quantization parameters (weight_scale, weight_shape),
    # which a dense model has no place for.
    weights = merged.state_dict()
    dense.load_state_dict({name: weights[name] for name in dense.state_dict()})
    dense.save_pretrained(output_dir, safe_serialization=True)
    load_tokenizer(quantized_dir).save_pretrained(output_dir)

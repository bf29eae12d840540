"""Train a LoRA adapter on the quantized model with TRL, loss on the frontier step only."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from repair.progress import ProgressCallback
from repair.silver import SilverRecord
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


def train_adapter(quantized_dir: Path, records: list[SilverRecord], output_dir: Path, settings: TrainSettings,
                  progress: ProgressCallback | None = None) -> dict:
    """Train a LoRA adapter on the decompressed quantized model and save it to ``output_dir``."""
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from repair.quantize import load_quantized
    from repair.sources import load_tokenizer

    # Load the frozen base and the data
    model = load_quantized(quantized_dir, for_training=True)
    tokenizer = load_tokenizer(quantized_dir)
    rows, too_long = training_rows(tokenizer, records, settings.max_length)
    if not rows:
        from repair.errors import StageError

        raise StageError(f"no Silver Bullet record fits in --max-length {settings.max_length}",
                         "Raise --max-length or score more problems", stage="restore")

    # Configure LoRA and TRL. TRL defaults to bf16, which fails on a CPU-only machine.
    import torch

    on_gpu = torch.cuda.is_available()
    peft_config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=LORA_DROPOUT,
                             target_modules="all-linear", task_type="CAUSAL_LM")
    scratch = tempfile.mkdtemp(prefix="repair-trainer-")
    args = SFTConfig(
        output_dir=scratch, per_device_train_batch_size=settings.batch_size, num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate, lr_scheduler_type="cosine", warmup_steps=WARMUP_RATIO,
        logging_steps=1, save_strategy="no", report_to=[], seed=settings.seed, max_length=settings.max_length,
        bf16=on_gpu and torch.cuda.is_bf16_supported(), use_cpu=not on_gpu, disable_tqdm=True,
        dataloader_num_workers=0,
    )

    class ForwardProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if progress is not None:
                progress("train adapter", state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, **kwargs):
            log.debug("step %d: %s", state.global_step, logs)

    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[ForwardProgress()])
    # With tqdm off, the Trainer prints every log line to stdout, which is for results only.
    trainer.remove_callback(PrinterCallback)

    # Train and save
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "records_trained": len(rows),
        "records_too_long": too_long,
        "optimizer_steps": trainer.state.global_step,
        "loss_first": round(losses[0], 4) if losses else None,
        "loss_last": round(losses[-1], 4) if losses else None,
        "trainable_parameters": trainable,
        "seconds": round(seconds, 1),
    }


def load_repaired(quantized_dir: Path | str, adapter_dir: Path | str):
    """Load the decompressed quantized model with the adapter on top, unmerged, for scoring."""
    from peft import PeftModel

    from repair.quantize import load_quantized

    model = PeftModel.from_pretrained(load_quantized(quantized_dir), str(adapter_dir))
    model.eval()
    return model

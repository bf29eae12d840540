"""Fixtures with models and data: a tiny random Llama with SmolLM2's tokenizer, and GSM8K slices.

The benchmark files are read from ../shared/data beside the checkout (REPAIR_TEST_DATA overrides).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DATA_ROOT = Path(os.environ.get("REPAIR_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# Bump when the tiny model's recipe changes, so that the cached copy is rebuilt.
TINY_MODEL_VERSION = 3
# Small enough to train in seconds; 64 wide so that group size 64 divides every layer.
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def gsm8k_rows(split: str, count: int) -> list[dict]:
    path = DATA_ROOT / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        pytest.skip(f"benchmark data not found at {path}; set REPAIR_TEST_DATA")
    with path.open() as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    folder = DATA_ROOT / "gsm8k"
    if not folder.is_dir():
        pytest.skip(f"benchmark data not found at {folder}; set REPAIR_TEST_DATA")
    return folder


@pytest.fixture(scope="session")
def small_gsm8k(tmp_path_factory) -> Path:
    """A folder with 40 training and 12 test problems of GSM8K."""
    folder = tmp_path_factory.mktemp("gsm8k-small")
    write_jsonl(folder / "train.jsonl", gsm8k_rows("train", 40))
    write_jsonl(folder / "test.jsonl", gsm8k_rows("test", 12))
    return folder


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer, read once from the built-in GGUF file and saved as a normal tokenizer folder."""
    from repair.sources import load_tokenizer, resolve_model

    source = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(source.path, gguf_file=source.gguf_file, eos_token_id=2)
    folder = tmp_path_factory.mktemp("smol-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(smol_tokenizer_dir):
    from repair.sources import load_tokenizer

    return load_tokenizer(smol_tokenizer_dir, eos_token_id=2)


def _fit_briefly(model, tokenizer, steps: int = 150) -> None:
    """Train a random model on GSM8K solutions until its layers matter (about a minute on 2 cores).

    A freshly initialised model is almost uniform, so no token has a positive margin and
    quantization cannot flip anything. After this it agrees with about 30% of solution tokens,
    and 2-bit GPTQ flips decision tokens in most problems (10 of 12 when checked).
    """
    import torch
    import torch.nn.functional as F

    from repair.steps import encode_trace, split_gsm8k_solution

    traces = []
    for row in gsm8k_rows("train", 48):
        solution, answer = split_gsm8k_solution(row["answer"])
        traces.append(encode_trace(tokenizer, row["question"], solution, answer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = traces[(step * 8) % len(traces):][:8]
        length = max(len(trace.input_ids) for trace in batch)
        input_ids = torch.tensor([t.input_ids + [2] * (length - len(t.input_ids)) for t in batch])
        # The output head runs on solution tokens only: over a 49k vocabulary it is most of the cost.
        rows, positions, targets = [], [], []
        for row, trace in enumerate(batch):
            for position in range(trace.prompt_length, len(trace.input_ids)):
                rows.append(row)
                positions.append(position - 1)
                targets.append(trace.input_ids[position])
        hidden = model.model(input_ids=input_ids).last_hidden_state[rows, positions]
        loss = F.cross_entropy(model.lm_head(hidden), torch.tensor(targets))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture(scope="session")
def tiny_model_dir(request, tokenizer) -> Path:
    """A 2-layer Llama with SmolLM2's vocabulary, briefly fitted, saved with a card that names its license.

    The fitted model is kept in pytest's cache folder, so only the first session pays for the fit.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(request.config.cache.mkdir(f"tiny-llama-{TINY_MODEL_VERSION}"))
    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_LLAMA)
    model = LlamaForCausalLM(config)
    _fit_briefly(model, tokenizer)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: testorg/tiny-llama\n---\n# tiny\n")
    model.save_pretrained(folder)  # written last: its presence marks a complete folder
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def tiny_run_config(model_dir: Path, dataset: Path, **overrides):
    """A RunConfig sized for the tiny model: seconds per stage on CPU."""
    from repair.config import RunConfig

    settings = dict(model=str(model_dir), bits=2, method="gptq", pull=False, dataset=str(dataset), calibration_samples=4,
                    calibration_length=64, train_problems=12, test_problems=6, budget=8, epochs=1.0,
                    batch_size=4, eval_batch_size=4)
    settings.update(overrides)
    return RunConfig(**settings)

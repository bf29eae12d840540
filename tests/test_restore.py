"""Training rows and LoRA training on the quantized tiny model."""

import pytest
import torch
from safetensors.torch import load_file

from repair.restore import TrainSettings, load_repaired, train_adapter, training_rows
from repair.silver import SilverRecord


def _record(step_index=1, is_answer=False, chosen="4 + 4 = 8"):
    return SilverRecord(problem_id="p", question="Tom has 4 apples and buys 4 more. How many now?",
                        prompt="", prefix=["Tom has 4 apples."] if step_index else [], chosen=chosen,
                        rejected="4 + 4 = 9", step_index=step_index, is_answer=is_answer, error_type="execution",
                        flip_token="8", fp_margin=1.0, q_margin=-1.0)


def test_labels_cover_only_the_frontier_step(tokenizer):
    rows, too_long = training_rows(tokenizer, [_record()], max_length=512)
    assert too_long == 0
    labels = rows[0]["labels"]
    labelled = [token for token in labels if token != -100]
    assert tokenizer.decode(labelled) == " 4 + 4 = 8\n"
    assert labels[:len(labels) - len(labelled)] == [-100] * (len(labels) - len(labelled))


def test_answer_record_ends_with_eos(tokenizer):
    rows, _ = training_rows(tokenizer, [_record(step_index=1, is_answer=True, chosen="8")], max_length=512)
    labelled = [token for token in rows[0]["labels"] if token != -100]
    assert labelled[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(labelled[:-1]) == " 8"


def test_long_records_dropped_and_counted(tokenizer):
    rows, too_long = training_rows(tokenizer, [_record(), _record()], max_length=20)
    assert rows == []
    assert too_long == 2


@pytest.fixture(scope="module")
def quantized_tiny(tiny_model_dir, tmp_path_factory):
    from repair.quantize import quantize

    folder = tmp_path_factory.mktemp("tiny-rtn") / "q"
    quantize(tiny_model_dir, folder, "rtn", 4, None, [], 64)
    return folder


def test_adapter_trains_and_base_stays(quantized_tiny, tmp_path):
    from repair.quantize import load_quantized

    before = load_quantized(quantized_tiny).state_dict()
    records = [_record() for _ in range(8)]
    settings = TrainSettings(lora_rank=4, lora_alpha=8, learning_rate=5e-3, epochs=3, batch_size=4, max_length=512, seed=0)
    summary = train_adapter(quantized_tiny, records, tmp_path / "adapter", settings)

    assert summary["records_trained"] == 8
    assert summary["optimizer_steps"] == 6
    assert summary["loss_last"] < summary["loss_first"]
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    assert lora_b and any(tensor.abs().sum() > 0 for tensor in lora_b)  # B starts at zero, so it moved

    repaired = load_repaired(quantized_tiny, tmp_path / "adapter")
    base = repaired.get_base_model().state_dict()
    for name, tensor in before.items():
        key = name if name in base else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(base[key], tensor), name

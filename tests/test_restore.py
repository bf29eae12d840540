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


def test_preference_rows_share_prompt(tokenizer):
    from repair.restore import preference_rows

    same = _record()
    same.rejected = same.chosen
    rows, too_long = preference_rows(tokenizer, [_record(), same], max_length=512)
    assert too_long == 0
    assert len(rows) == 1  # the record whose rejected step equals the chosen one has no preference
    assert tokenizer.decode(rows[0]["chosen_ids"]) == " 4 + 4 = 8\n"
    assert tokenizer.decode(rows[0]["rejected_ids"]) == " 4 + 4 = 9\n"
    assert tokenizer.decode(rows[0]["prompt_ids"]).endswith("Step 2:")


def test_dpo_prefers_chosen_step(quantized_tiny, tmp_path, tokenizer):
    import torch

    from repair.restore import preference_rows

    records = [_record() for _ in range(8)]
    settings = TrainSettings(lora_rank=4, lora_alpha=8, learning_rate=5e-3, epochs=3, batch_size=4, max_length=512,
                             seed=0, dpo_beta=0.1)
    summary = train_adapter(quantized_tiny, records, tmp_path / "adapter", settings, objective="dpo")
    assert summary["dpo"]["records"] == 8
    assert "sft" not in summary
    assert summary["optimizer_steps"] == 6

    # The log-ratio of chosen over rejected grows under the adapter.
    row = preference_rows(tokenizer, records[:1], 512)[0][0]

    def margin(model):
        scores = []
        for completion in (row["chosen_ids"], row["rejected_ids"]):
            ids = torch.tensor([row["prompt_ids"] + completion])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            picked = logprobs.gather(1, ids[0, 1:, None]).squeeze(1)
            scores.append(float(picked[-len(completion):].sum()))
        return scores[0] - scores[1]

    from repair.quantize import load_quantized

    assert margin(load_repaired(quantized_tiny, tmp_path / "adapter")) > margin(load_quantized(quantized_tiny)) + 0.5


def test_sft_then_dpo_continues_adapter(quantized_tiny, tmp_path):
    records = [_record() for _ in range(4)]
    settings = TrainSettings(lora_rank=4, lora_alpha=8, learning_rate=5e-3, epochs=1, batch_size=4, max_length=512, seed=0)
    summary = train_adapter(quantized_tiny, records, tmp_path / "adapter", settings, objective="sft+dpo")
    assert summary["sft"]["optimizer_steps"] == 1
    assert summary["dpo"]["optimizer_steps"] == 1
    assert summary["optimizer_steps"] == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_control_adapter_on_reference(tiny_model_dir, tmp_path):
    records = [_record() for _ in range(4)]
    settings = TrainSettings(lora_rank=4, lora_alpha=8, learning_rate=5e-3, epochs=1, batch_size=4, max_length=512, seed=0)
    summary = train_adapter(tiny_model_dir, records, tmp_path / "control", settings, base="reference")
    assert summary["base"] == "reference"
    assert summary["records_trained"] == 4


def test_merged_weights_match_adapter(quantized_tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from repair.restore import merge_adapter

    settings = TrainSettings(lora_rank=4, lora_alpha=8, learning_rate=5e-3, epochs=1, batch_size=4, max_length=512, seed=0)
    train_adapter(quantized_tiny, [_record() for _ in range(4)], tmp_path / "adapter", settings)
    merge_adapter(quantized_tiny, tmp_path / "adapter", tmp_path / "dense")

    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32).eval()
    assert getattr(dense.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 20, 300, 4000, 50, 6]])
    with torch.no_grad():
        expected = load_repaired(quantized_tiny, tmp_path / "adapter")(input_ids=ids).logits
        actual = dense(input_ids=ids).logits
    assert torch.allclose(actual, expected, atol=1e-4)

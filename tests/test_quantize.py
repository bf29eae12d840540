"""Group-size choice and llm-compressor quantization of the tiny model."""

import json

import pytest
import torch

from model_fixtures import gsm8k_rows
from repair.config import RunConfig
from repair.errors import ConfigError
from repair.quantize import choose_group_size, load_quantized, quantize
from repair.steps import Problem, split_gsm8k_solution


def _problems(count):
    problems = []
    for index, row in enumerate(gsm8k_rows("train", count)):
        steps, answer = split_gsm8k_solution(row["answer"])
        problems.append(Problem(id=str(index), question=row["question"], steps=steps, answer=answer))
    return problems


def test_group_size_fitted(tiny_model):
    size, reason = choose_group_size(tiny_model, None)
    assert size == 64
    assert "largest" in reason


def test_group_size_not_dividing_rejected(tiny_model):
    with pytest.raises(ConfigError, match="--group-size 48 does not divide"):
        choose_group_size(tiny_model, 48)


@pytest.mark.parametrize("bits", [5, 1, 16])
def test_unsupported_bits_rejected(bits):
    with pytest.raises(ConfigError, match=f"--bits {bits} is not supported"):
        RunConfig(model="smollm2-135m", bits=bits)


@pytest.mark.parametrize(("method", "bits"), [("rtn", 4), ("gptq", 3), ("gptq", 8), ("awq", 4), ("awq", 3)])
def test_quantized_checkpoint_on_grid(tiny_model_dir, tmp_path, method, bits):
    result = quantize(tiny_model_dir, tmp_path / "q", method, bits, None, _problems(4), 64)
    assert result.group_size == 64
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "compressed-tensors"
    assert saved["config_groups"]["group_0"]["weights"]["num_bits"] == bits
    assert saved["config_groups"]["group_0"]["weights"]["symmetric"] is (method != "awq")

    model = load_quantized(tmp_path / "q")
    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    # Each group of 64 input columns contains at most 2**bits distinct values.
    groups = weight.reshape(weight.shape[0], -1, 64)
    distinct = max(len(torch.unique(group)) for row in groups for group in row)
    assert distinct <= 2 ** bits


def test_smoothquant_w8a8_checkpoint(tiny_model_dir, tmp_path):
    result = quantize(tiny_model_dir, tmp_path / "q", "smoothquant", 8, None, _problems(4), 64)
    assert result.group_size == 0
    scheme = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert scheme["weights"]["num_bits"] == 8
    assert scheme["weights"]["strategy"] == "channel"
    assert scheme["input_activations"]["num_bits"] == 8
    assert scheme["input_activations"]["dynamic"] is True
    model = load_quantized(tmp_path / "q")
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"method": "smoothquant", "bits": 4}, "smoothquant quantizes weights and activations to 8 bits, not 4"),
     ({"method": "smoothquant", "bits": 8, "group_size": 64}, "--group-size does not apply to smoothquant"),
     ({"method": "int4", "bits": 4}, "--method 'int4' is not supported"),
     ({"bits": 4, "group_size": 0}, "--group-size 0 is invalid")],
)
def test_impossible_combinations_rejected(settings, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(model="smollm2-135m", **settings)


def test_gptq_needs_calibration(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="gptq needs calibration"):
        quantize(tiny_model_dir, tmp_path / "q", "gptq", 4, None, [], 64)


def test_ignored_layers_stay_dense(tiny_model_dir, tmp_path):
    quantize(tiny_model_dir, tmp_path / "q", "rtn", 2, None, [], 64, ignore=["lm_head", "re:.*down_proj"])
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert "re:.*down_proj" in saved["ignore"] or "model.layers.0.mlp.down_proj" in saved["ignore"]

    model = load_quantized(tmp_path / "q")
    up = model.model.layers[0].mlp.up_proj.weight.detach().reshape(-1, 64)
    down = model.model.layers[0].mlp.down_proj.weight.detach().reshape(-1, 64)
    assert max(len(torch.unique(group)) for group in up) <= 4
    assert max(len(torch.unique(group)) for group in down) > 4


@pytest.mark.parametrize(("ignore", "message"), [
    (["lm_head", "no_such_layer"], "--ignore no_such_layer matches no linear layer"),
    (["re:.*"], "--ignore leaves no linear layer to quantize"),
])
def test_bad_ignore_rejected(tiny_model_dir, tmp_path, ignore, message):
    with pytest.raises(ConfigError, match=message):
        quantize(tiny_model_dir, tmp_path / "q", "rtn", 4, None, [], 64, ignore=ignore)
    assert not (tmp_path / "q").exists()

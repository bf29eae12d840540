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


@pytest.mark.parametrize(("method", "bits"), [("rtn", 4), ("gptq", 3), ("gptq", 8)])
def test_quantized_checkpoint_on_grid(tiny_model_dir, tmp_path, method, bits):
    result = quantize(tiny_model_dir, tmp_path / "q", method, bits, None, _problems(4), 64)
    assert result.group_size == 64
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "compressed-tensors"
    assert saved["config_groups"]["group_0"]["weights"]["num_bits"] == bits

    model = load_quantized(tmp_path / "q")
    weight = model.model.layers[0].mlp.up_proj.weight.detach()
    scale = model.model.layers[0].mlp.up_proj.weight_scale.detach()
    # Every weight is an integer multiple of its group's scale, within the signed range of `bits`.
    levels = weight.reshape(weight.shape[0], -1, 64) / scale[:, :, None]
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert levels.abs().max() <= 2 ** (bits - 1)


def test_gptq_needs_calibration(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="GPTQ needs calibration"):
        quantize(tiny_model_dir, tmp_path / "q", "gptq", 4, None, [], 64)

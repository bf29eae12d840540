"""Teacher-forced log-probabilities and margins."""

import pytest
import torch

from model_fixtures import gsm8k_rows
from repair.measure import load_scores, save_scores, score_traces, summarize
from repair.steps import Problem, encode_trace, split_gsm8k_solution


@pytest.fixture(scope="module")
def problems():
    result = []
    for index, row in enumerate(gsm8k_rows("test", 5)):
        steps, answer = split_gsm8k_solution(row["answer"])
        result.append(Problem(id=f"p{index}", question=row["question"], steps=steps, answer=answer))
    return result


def test_scores_match_direct_computation(tiny_model, tokenizer, problems):
    score = score_traces(tiny_model, tokenizer, problems[:1])[0]
    trace = encode_trace(tokenizer, problems[0].question, problems[0].steps, problems[0].answer)
    with torch.no_grad():
        logits = tiny_model(torch.tensor([trace.input_ids])).logits[0]
    start = trace.prompt_length
    targets = torch.tensor(trace.input_ids[start:])
    predicted = logits[start - 1:-1]
    expected_logprob = torch.log_softmax(predicted, -1).gather(1, targets[:, None]).squeeze(1)
    others = predicted.clone()
    others[torch.arange(len(targets)), targets] = -torch.inf
    expected_margin = predicted.gather(1, targets[:, None]).squeeze(1) - others.max(-1).values

    assert score.token_ids == targets.tolist()
    assert torch.allclose(torch.tensor(score.logprob), expected_logprob, atol=1e-4)
    assert torch.allclose(torch.tensor(score.margin), expected_margin, atol=1e-4)


def test_batching_does_not_change_scores(tiny_model, tokenizer, problems):
    alone = [score_traces(tiny_model, tokenizer, [p], batch_size=1)[0] for p in problems]
    batched = score_traces(tiny_model, tokenizer, problems, batch_size=4)
    for one, many in zip(alone, batched):
        assert one.problem_id == many.problem_id
        assert torch.allclose(torch.tensor(one.logprob), torch.tensor(many.logprob), atol=1e-4)


def test_scores_round_trip_and_summary(tiny_model, tokenizer, problems, tmp_path):
    scores = score_traces(tiny_model, tokenizer, problems)
    save_scores(scores, tmp_path / "s.parquet")
    loaded = load_scores(tmp_path / "s.parquet")
    assert loaded == scores
    summary = summarize(scores)
    assert summary["tokens"] == sum(len(s.token_ids) for s in scores)
    # The briefly fitted tiny model is far from uniform (ln 49152 = 10.8) but far from perfect.
    assert 1.0 < summary["nll"] < 4.0
    assert 0.1 < summary["top1_agreement"] < 0.8

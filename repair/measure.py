"""Teacher-forced scoring of reference traces: log-probability and margin of every token.

One forward pass per problem gives, for each reference token, its log-probability and its
margin (its logit minus the largest other logit). A positive margin means greedy decoding
would produce that token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from repair.progress import ProgressCallback, track
from repair.steps import EncodedTrace, Problem, encode_trace, is_decision_token, question_words

log = logging.getLogger(__name__)


@dataclass
class TraceScore:
    """Per-token scores of one problem's reference solution (prompt tokens excluded)."""

    problem_id: str
    token_ids: list[int]
    token_step: list[int]
    decision: list[bool]
    logprob: list[float]
    margin: list[float]


def encode_problems(tokenizer, problems: list[Problem]) -> list[EncodedTrace]:
    return [encode_trace(tokenizer, p.question, p.steps, p.answer) for p in problems]


def decision_mask(tokenizer, problem: Problem, trace: EncodedTrace) -> list[bool]:
    """Mark the solution tokens that carry content, excluding ``Step k:`` headers."""
    words = question_words(problem.question)
    solution_ids = trace.input_ids[trace.prompt_length:]
    texts = tokenizer.convert_ids_to_tokens(solution_ids)
    texts = [tokenizer.convert_tokens_to_string([text]) for text in texts]
    headers = trace.token_header[trace.prompt_length:]
    return [not header and is_decision_token(text, words) for text, header in zip(texts, headers)]


def left_padded(rows: list[list[int]], pad_id: int):
    """Return ``(input_ids, attention_mask)`` with every row right-aligned, so that each continues from its last real token."""
    import torch

    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, length - len(ids):] = torch.tensor(ids)
        attention[row, length - len(ids):] = 1
    return input_ids, attention


def score_traces(model, tokenizer, problems: list[Problem], batch_size: int = 8,
                 progress: ProgressCallback | None = None, desc: str = "score") -> list[TraceScore]:
    """Score every problem's reference solution under ``model`` by teacher forcing."""
    import torch

    traces = encode_problems(tokenizer, problems)
    # Sorting by length keeps padding small; results are put back in input order.
    order = sorted(range(len(problems)), key=lambda i: len(traces[i].input_ids))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    results: dict[int, TraceScore] = {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    model.eval()
    with torch.inference_mode():
        for batch in track(batches, desc, progress):
            # Left padding puts every solution at the end of its row, so the output head only
            # has to run on the last positions (``logits_to_keep``), not on the prompts.
            keep = max(len(traces[i].input_ids) - traces[i].prompt_length for i in batch) + 1
            input_ids, attention = left_padded([traces[i].input_ids for i in batch], pad_id)
            length = input_ids.shape[1]
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                           logits_to_keep=keep).logits.float()

            for row, index in enumerate(batch):
                trace = traces[index]
                solution_length = len(trace.input_ids) - trace.prompt_length
                # The logits at position t predict token t + 1: the last one predicts nothing scored.
                step_logits = logits[row, keep - 1 - solution_length:keep - 1]
                targets = input_ids[row, length - solution_length:]
                results[index] = _token_scores(problems[index].id, trace, step_logits, targets,
                                               decision_mask(tokenizer, problems[index], trace))
    return [results[i] for i in range(len(problems))]


def _token_scores(pid: str, trace: EncodedTrace, logits, targets, decision: list[bool]) -> TraceScore:
    import torch

    logprobs = torch.log_softmax(logits, dim=-1)
    target_logprob = logprobs.gather(1, targets[:, None]).squeeze(1)
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    top2 = logits.topk(2, dim=-1)
    top_is_target = top2.indices[:, 0] == targets
    best_other = torch.where(top_is_target, top2.values[:, 1], top2.values[:, 0])
    margin = target_logit - best_other
    return TraceScore(
        problem_id=pid,
        token_ids=targets.tolist(),
        token_step=trace.token_step[trace.prompt_length:],
        decision=decision,
        logprob=target_logprob.tolist(),
        margin=margin.tolist(),
    )


def summarize(scores: list[TraceScore]) -> dict:
    """Return NLL per token and top-1 agreement over all solution tokens."""
    logprob = np.concatenate([np.asarray(s.logprob) for s in scores]) if scores else np.zeros(0)
    margin = np.concatenate([np.asarray(s.margin) for s in scores]) if scores else np.zeros(0)
    return {
        "problems": len(scores),
        "tokens": int(logprob.size),
        "nll": round(float(-logprob.mean()), 4) if logprob.size else None,
        "top1_agreement": round(float((margin > 0).mean()), 4) if margin.size else None,
    }


def save_scores(scores: list[TraceScore], path: Path) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([s.__dict__ for s in scores]).to_parquet(path, index=False)


def load_scores(path: Path) -> list[TraceScore]:
    import pandas as pd

    frame = pd.read_parquet(path)
    return [
        TraceScore(problem_id=row.problem_id, token_ids=[int(x) for x in row.token_ids],
                   token_step=[int(x) for x in row.token_step], decision=[bool(x) for x in row.decision],
                   logprob=[float(x) for x in row.logprob], margin=[float(x) for x in row.margin])
        for row in frame.itertuples(index=False)
    ]


# Text NLL is measured on at most 64 chunks of 256 tokens (16,384 tokens) from the file's start,
# so that the three models are compared on the same tokens at a bounded cost.
TEXT_CHUNK_TOKENS = 256
TEXT_MAX_CHUNKS = 64


def text_nll(model, tokenizer, path: Path, batch_size: int = 8, chunk_tokens: int = TEXT_CHUNK_TOKENS,
             max_chunks: int = TEXT_MAX_CHUNKS) -> dict:
    """Return the mean NLL per token of a plain-text file, cut into equal chunks from its start."""
    import torch

    ids = tokenizer(Path(path).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    chunks = [ids[i:i + chunk_tokens] for i in range(0, len(ids) - chunk_tokens + 1, chunk_tokens)][:max_chunks]
    if not chunks:
        raise ValueError(f"{path} has fewer than {chunk_tokens} tokens")
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(chunks), batch_size):
            batch = torch.tensor(chunks[start:start + batch_size])
            logits = model(input_ids=batch).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, batch[:, 1:, None]).squeeze(2)
            total -= float(logprobs.sum())
            count += logprobs.numel()
    return {"nll": round(total / count, 4), "tokens": count, "chunks": len(chunks)}

"""Find each problem's failure frontier and the quantized model's own step there.

A flip is a decision token whose margin is positive under the reference model and negative
under the quantized one. The frontier is the first step of a reference trace with a flip.
At the frontier the quantized model writes its own version of the step from the correct
prefix: that is the rejected step of a Silver Bullet record.
"""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal

from repair.measure import TraceScore, left_padded
from repair.progress import ProgressCallback, track
from repair.steps import Problem, encode_trace, numbers_in

log = logging.getLogger(__name__)

ErrorType = Literal["execution", "method", "conceptual", "reasoning"]

# Small constants that appear in solutions without being named in the problem
# (unit conversions, halves, percentages).
_COMMON_CONSTANTS = {"0", "1", "2", "3", "4", "5", "7", "10", "12", "24", "30", "52", "60", "100", "365", "1000"}
_EQUATION = re.compile(r"([-\d.,\s+*/x×÷()$]*\d[-\d.,\s+*/x×÷()$]*)=\s*\$?\s*(-?[\d,]*\.?\d+)")


@dataclass
class Frontier:
    """The first faulty step of one problem, found by teacher forcing."""

    problem_id: str
    step_index: int  # 0-based; the answer line is the last step
    flip_token: str  # the first flipped decision token of the step
    fp_margin: float  # reference model's margin on that token
    q_margin: float  # quantized model's margin on that token
    flips: int  # all flips of the problem
    chosen: str = ""  # the reference step
    rejected: str = ""  # the quantized model's own step from the correct prefix
    error_type: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def find_flips(fp: TraceScore, q: TraceScore) -> list[int]:
    """Return solution-token positions where the reference is right and the quantized model is not."""
    return [i for i, (decision, a, b) in enumerate(zip(fp.decision, fp.margin, q.margin)) if decision and a > 0 and b < 0]


def locate_frontiers(tokenizer, problems: list[Problem], fp_scores: list[TraceScore],
                     q_scores: list[TraceScore]) -> list[Frontier]:
    """Return a frontier for every problem that has at least one flip, in input order."""
    frontiers = []
    for problem, fp, q in zip(problems, fp_scores, q_scores):
        flips = find_flips(fp, q)
        if not flips:
            continue
        first = flips[0]
        step = fp.token_step[first]
        steps = list(problem.steps) + [problem.answer]
        frontiers.append(Frontier(
            problem_id=problem.id,
            step_index=step,
            flip_token=tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens([fp.token_ids[first]])),
            fp_margin=round(fp.margin[first], 4),
            q_margin=round(q.margin[first], 4),
            flips=len(flips),
            chosen=steps[step],
        ))
    return frontiers


def generate_rejected(model, tokenizer, problems: dict[str, Problem], frontiers: list[Frontier],
                      batch_size: int = 8, max_new_tokens: int = 40,
                      progress: ProgressCallback | None = None) -> None:
    """Fill ``rejected`` with the model's greedy continuation of the frontier step (one line)."""
    import torch

    prompts = []
    for frontier in frontiers:
        problem = problems[frontier.problem_id]
        trace = encode_trace(tokenizer, problem.question, problem.steps, problem.answer)
        prompts.append(trace.input_ids[:trace.step_span(frontier.step_index)[0]])

    pad_id = tokenizer.pad_token_id
    batches = [list(range(i, min(i + batch_size, len(prompts)))) for i in range(0, len(prompts), batch_size)]
    model.eval()
    with torch.inference_mode():
        for batch in track(batches, "generate frontier steps", progress):
            input_ids, attention = left_padded([prompts[i] for i in batch], pad_id)
            length = input_ids.shape[1]
            output = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=False,
                                    max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                    stop_strings=["\n"], tokenizer=tokenizer)
            for row, index in enumerate(batch):
                text = tokenizer.decode(output[row, length:], skip_special_tokens=True)
                frontiers[index].rejected = text.split("\n")[0].strip()

    for frontier in frontiers:
        problem = problems[frontier.problem_id]
        prefix = list(problem.steps[:frontier.step_index])
        frontier.error_type = classify_error(problem.question, prefix, frontier.chosen, frontier.rejected)


def classify_error(question: str, prefix: list[str], chosen: str, rejected: str) -> ErrorType:
    """Classify a wrong step by rules.

    execution: an equation in the step whose stated result is false;
    conceptual: an operand that appears neither in the problem nor in earlier steps;
    method: known operands combined differently from the reference step;
    reasoning: anything else, such as a value that contradicts an earlier step.
    """
    for expression, stated in _EQUATION.findall(rejected):
        value = safe_eval(expression)
        if value is not None and abs(value - float(stated.replace(",", ""))) > 1e-6 * max(1.0, abs(value)):
            return "execution"

    known = set(numbers_in(question)) | {n for step in prefix for n in numbers_in(step)} | _COMMON_CONSTANTS
    operands = [n for expression, _ in _EQUATION.findall(rejected) for n in numbers_in(expression)]
    if any(n not in known for n in operands):
        return "conceptual"
    chosen_operands = [n for expression, _ in _EQUATION.findall(chosen) for n in numbers_in(expression)]
    if operands and sorted(operands) != sorted(chosen_operands):
        return "method"
    if operands and _operators(rejected) != _operators(chosen):
        return "method"
    return "reasoning"


def _operators(text: str) -> list[str]:
    return sorted(re.findall(r"[+*/×÷x-](?=\s*\$?\d)", text))


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def safe_eval(expression: str) -> float | None:
    """Evaluate an arithmetic expression of numbers and + - * / (x and × mean *, ÷ means /); None if it is not one."""
    text = expression.replace("$", "").replace(",", "").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", text).strip()
    if not text or not re.fullmatch(r"[\d.+\-*/()\s]+", text):
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unsupported expression node {type(node).__name__}")

    try:
        return walk(tree)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def summarize_frontiers(problems_scored: int, frontiers: list[Frontier]) -> dict:
    """Return counts, a histogram of frontier steps (1-based) and error types."""
    positions = Counter(f.step_index + 1 for f in frontiers)
    return {
        "problems_scored": problems_scored,
        "problems_with_frontier": len(frontiers),
        "frontier_histogram": {str(k): positions[k] for k in sorted(positions)},
        "error_types": dict(Counter(f.error_type for f in frontiers if f.error_type)),
        "mean_flips_per_problem": round(sum(f.flips for f in frontiers) / problems_scored, 3) if problems_scored else None,
    }

"""Prompt format, step splitting and answer extraction, shared by every stage.

A solution is written as numbered lines ``Step k: ...`` followed by ``The answer is: X``.
Scoring, locating and training all tokenize through ``encode_trace`` so that a token index
means the same thing in every stage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Kept short on purpose: every scored or trained token also pays for the prompt.
PROMPT_TEMPLATE = (
    "Solve step by step: one line per step, starting 'Step 1:', 'Step 2:' and so on, "
    "then the line 'The answer is: <answer>'.\n\n{question}"
)
ANSWER_PREFIX = "The answer is: "

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_OPERATOR_CHARS = set("+-*/=×÷%$^<>")
_WORD = re.compile(r"[A-Za-z]{3,}")


@dataclass(frozen=True)
class Problem:
    """One benchmark problem with a step-by-step reference solution."""

    id: str
    question: str
    steps: tuple[str, ...]  # reference steps without the 'Step k:' header
    answer: str


def clean_step(text: str) -> str:
    """Remove GSM8K calculator notes such as ``<<48/2=24>>`` and surrounding blanks."""
    return re.sub(r"\s+", " ", _CALCULATOR_NOTE.sub("", text)).strip()


def split_gsm8k_solution(solution: str) -> tuple[tuple[str, ...], str] | None:
    """Split a GSM8K gold solution into steps and the answer after ``####``; None if it has no answer."""
    if "####" not in solution:
        return None
    body, _, answer = solution.rpartition("####")
    answer = normalize_number(answer.strip())
    steps = tuple(step for step in (clean_step(line) for line in body.splitlines()) if step)
    if not answer or not steps:
        return None
    return steps, answer


def normalize_number(text: str) -> str:
    """Drop thousands separators, dollar signs and trailing zeros: ``$1,000.50`` -> ``1000.5``."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    return str(int(value)) if value == int(value) else repr(value)


def step_header(index: int) -> str:
    """Return the header of step ``index`` (0-based), for example ``'Step 1: '``."""
    return f"Step {index + 1}: "


def format_solution(steps: tuple[str, ...] | list[str], answer: str) -> str:
    lines = [step_header(i) + step for i, step in enumerate(steps)]
    lines.append(ANSWER_PREFIX + answer)
    return "\n".join(lines)


def build_prompt(tokenizer, question: str) -> str:
    """Return the chat-formatted prompt text, ending where the assistant's answer begins."""
    messages = [{"role": "user", "content": PROMPT_TEMPLATE.format(question=question)}]
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return messages[0]["content"] + "\n\n"


@dataclass
class EncodedTrace:
    """Token ids of prompt plus reference solution, with the step each token belongs to.

    ``token_step[i]`` is the 0-based step of token ``i`` (the answer line counts as the last
    step), or -1 for prompt tokens. ``token_header[i]`` marks the ``Step k:`` header tokens,
    which carry no content and are never decision tokens.
    """

    input_ids: list[int]
    prompt_length: int
    token_step: list[int]
    token_header: list[bool]

    def step_span(self, step: int) -> tuple[int, int]:
        """Return the token range [start, end) of a step's body, without its header."""
        positions = [i for i, (s, h) in enumerate(zip(self.token_step, self.token_header)) if s == step and not h]
        return (positions[0], positions[-1] + 1) if positions else (0, 0)


def encode_trace(tokenizer, question: str, steps: tuple[str, ...] | list[str], answer: str | None,
                 close_last: bool = False) -> EncodedTrace:
    """Tokenize the prompt and each step separately and concatenate them.

    Tokenizing piece by piece keeps step boundaries exact. The answer line is appended as a
    final step when ``answer`` is given. Each step but the last ends with a newline; with
    ``close_last`` the last one does too, or ends with EOS when it is the answer line.
    """
    prompt_ids = tokenizer(build_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids)
    token_step = [-1] * len(ids)
    token_header = [False] * len(ids)

    pieces: list[tuple[str, str]] = [(step_header(i), step) for i, step in enumerate(steps)]
    if answer is not None:
        pieces.append((ANSWER_PREFIX, answer))
    for index, (header, body) in enumerate(pieces):
        is_last = index == len(pieces) - 1
        header_ids = tokenizer(header.rstrip(" "), add_special_tokens=False)["input_ids"]
        body_ids = tokenizer(" " + body + ("" if is_last and not close_last else "\n"), add_special_tokens=False)["input_ids"]
        if is_last and close_last and answer is not None:
            body_ids = tokenizer(" " + body, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids += header_ids + body_ids
        token_step += [index] * (len(header_ids) + len(body_ids))
        token_header += [True] * len(header_ids) + [False] * len(body_ids)
    return EncodedTrace(ids, len(prompt_ids), token_step, token_header)


def is_decision_token(token_text: str, question_words: set[str]) -> bool:
    """Tell whether a token carries a step's content: a digit, an operator, or a quantity word of the problem."""
    stripped = token_text.strip()
    if not stripped:
        return False
    if any(char.isdigit() for char in stripped) or any(char in _OPERATOR_CHARS for char in stripped):
        return True
    return stripped.lower() in question_words


def question_words(question: str) -> set[str]:
    """Return the lower-cased words of three letters or more in a problem, used to spot quantity words."""
    return {word.lower() for word in _WORD.findall(question)}


def numbers_in(text: str) -> list[str]:
    """Return every number in ``text``, normalized."""
    return [normalize_number(match) for match in _NUMBER.findall(text)]


def parse_step_line(line: str) -> str:
    """Strip a leading ``Step k:`` header from a generated line."""
    return re.sub(r"^\s*Step\s*\d+\s*:\s*", "", line).strip()

"""Final-answer extraction and equivalence for GSM8K numbers, MATH LaTeX and AIME integers.

Two extractors read a generated solution. The strict one takes only the fixed answer line
(``The answer is: X``). The flexible one falls back to the last ``\\boxed{}``, then to a
phrase like "the answer is X" anywhere, then to the last number. Equivalence is numeric when
the gold answer is a number, and otherwise mathematical through ``math-verify``.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

from repair.steps import ANSWER_PREFIX, normalize_number

log = logging.getLogger(__name__)

Extractor = Literal["strict", "flexible"]
EXTRACTORS: tuple[Extractor, ...] = ("strict", "flexible")

_ANSWER_LINE = re.compile(r"^\s*" + re.escape(ANSWER_PREFIX.strip()) + r"\s*(.*?)\s*$", re.MULTILINE)
_ANSWER_PHRASE = re.compile(r"answer is[:\s]*(.+?)(?:\n|$)", re.IGNORECASE)
# A number with optional sign, thousands separators and decimals: "-1,234.50", ".5".
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
_PLAIN_NUMBER = re.compile(r"^-?(?:\d+|\d{1,3}(?:,\d{3})+)(?:\.\d+)?$|^-?\.\d+$")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def extract_answer(text: str, extractor: Extractor = "strict") -> str | None:
    """Return the final answer written in ``text``, or None when the extractor finds none."""
    lines = _ANSWER_LINE.findall(text)
    if lines and lines[-1]:
        return _strip_answer(lines[-1])
    if extractor == "strict":
        return None

    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    phrases = _ANSWER_PHRASE.findall(text)
    if phrases and phrases[-1].strip():
        return _strip_answer(phrases[-1])
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _strip_answer(answer: str) -> str:
    """Drop a trailing full stop and surrounding ``$...$`` or ``\\boxed{}`` from an answer line."""
    answer = answer.strip().rstrip(".").strip()
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed
    if len(answer) > 2 and answer.startswith("$") and answer.endswith("$") and answer.count("$") == 2:
        answer = answer[1:-1].strip()
    return answer


def last_boxed(text: str) -> str | None:
    """Return the contents of the last ``\\boxed{...}`` or ``\\fbox{...}``, matching nested braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    index = text.index("{", start) + 1
    depth = 1
    for position in range(index, len(text)):
        if text[position] == "{":
            depth += 1
        elif text[position] == "}":
            depth -= 1
            if depth == 0:
                return text[index:position].strip()
    return None


def is_number(answer: str) -> bool:
    """Tell whether a gold answer is a plain number such as ``-1,000`` or ``14.0``."""
    return bool(_PLAIN_NUMBER.match(answer.strip().replace("$", "")))


def to_number(text: str) -> float | None:
    """Read the number a predicted answer states, ignoring dollar signs, separators and units.

    ``$1,200 dollars`` gives 1200. With several numbers the last one counts, so that
    ``5 + 3 = 8`` gives 8. A percent sign is kept as a unit, so ``25%`` gives 25.
    """
    cleaned = text.replace("$", "").replace("\\!", "").replace("{,}", ",")
    cleaned = re.sub(r"\\(?:text|mathrm)\{[^{}]*\}", " ", cleaned)
    fraction = re.fullmatch(r"\s*(-?)\\d?frac\{(\d+)\}\{(\d+)\}\s*", cleaned)
    if fraction:
        sign = -1.0 if fraction.group(1) else 1.0
        return sign * int(fraction.group(2)) / int(fraction.group(3)) if int(fraction.group(3)) else None
    numbers = _NUMBER.findall(cleaned)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


def answers_match(gold: str, predicted: str | None) -> bool:
    """Tell whether ``predicted`` is mathematically equal to ``gold``.

    A numeric gold answer is compared as a number (relative tolerance 1e-6). Any other gold
    answer goes through ``math-verify``, and a text answer such as ``\\text{Evelyn}`` also
    matches the same words without LaTeX, ignoring case.
    """
    if predicted is None or not predicted.strip():
        return False
    if is_number(gold):
        expected = float(normalize_number(gold.replace("$", "")))
        value = to_number(predicted)
        return value is not None and abs(value - expected) <= 1e-6 * max(1.0, abs(expected))

    if _plain_text(gold) and _plain_text(gold) == _plain_text(predicted):
        return True
    return _math_verify(gold, predicted)


def _plain_text(answer: str) -> str:
    """Return the words of a text answer, lower-cased, without LaTeX text commands or punctuation."""
    text = _TEXT_COMMAND.sub(r"\1", answer)
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _math_verify(gold: str, predicted: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_parsed = parse(f"${gold}$", extraction_config=[LatexExtractionConfig()])
    if not gold_parsed:
        log.debug("math-verify could not parse the gold answer %r", gold)
        return False
    # The prediction may be LaTeX or plain text ("3*sqrt(13)"), so both readings are tried.
    candidates = [parse(f"${predicted}$", extraction_config=[LatexExtractionConfig()]),
                  parse(predicted, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])]
    return any(candidate and verify(gold_parsed, candidate) for candidate in candidates)


def grade(gold: str, text: str) -> dict[str, bool]:
    """Grade one generated solution with both extractors: ``{"strict": ..., "flexible": ...}``."""
    return {extractor: answers_match(gold, extract_answer(text, extractor)) for extractor in EXTRACTORS}

"""The first faulty step of a generated solution, found by rules.

Each step of the quantized model's solution is checked in order against the problem, its own
earlier steps and the reference solution:

- execution: an arithmetic expression whose stated result is false (``48/2 = 26``);
- conceptual: an operand that appears neither in the problem nor in earlier steps, in place
  of a quantity of the problem (``0.2 x 45`` where the problem gives 50 minutes);
- reasoning: an operand or stated value that contradicts an earlier step (``11 * 2`` after a
  step found 9 eggs), or an answer line that disagrees with the last step;
- method: the same quantities as the matching reference step, combined into another value
  (``48 * 24`` where the reference adds them).

A step no rule flags counts as correct, so a wrong solution may have no faulty step by rules;
a judge model settles those (``repair.judge``).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal

from repair.locate import safe_eval
from repair.steps import ANSWER_PREFIX

log = logging.getLogger(__name__)

ErrorType = Literal["execution", "conceptual", "method", "reasoning"]
ERROR_TYPES: tuple[ErrorType, ...] = ("execution", "conceptual", "method", "reasoning")

# Constants that solutions use without the problem naming them: unit conversions, halves, percent.
COMMON_CONSTANTS = frozenset({0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 12.0, 24.0, 30.0, 52.0, 60.0, 100.0, 365.0, 1000.0})
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "hundred": 100,
    "half": 2, "twice": 2, "double": 2, "triple": 3, "thrice": 3, "dozen": 12, "quarter": 4,
}
_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?|(?<![\w.])-?\.\d+")
# The arithmetic run just before an '=': digits, operators, brackets, currency, percent and 'x' as times.
_EXPRESSION_TAIL = re.compile(r"[\d.,\s+\-*/x×÷()$%]*$")
_EXPRESSION_HEAD = re.compile(r"^[\d.,\s+\-*/x×÷()$%]*")
_STATED = re.compile(r"^\s*\$?\s*(-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?)")
_OPERATOR = re.compile(r"\d\s*[%)]?\s*[+\-*/x×÷]\s*[$(]?\s*\.?\d")


@dataclass
class Equation:
    """One ``expression = stated result`` found in a step."""

    expression: str
    operands: list[float]
    stated: float
    stated_text: str
    value: float | None  # None when the expression is not plain arithmetic


@dataclass
class Fault:
    """The first faulty step of one generated solution."""

    step_index: int  # 0-based; the answer line counts as the step after the last one
    error_type: ErrorType
    step: str
    reference_step: str
    detail: str  # which rule fired, on which value

    def to_dict(self) -> dict:
        return asdict(self)


def to_float(text: str) -> float:
    return float(text.replace(",", "").replace("$", ""))


def numbers_of(text: str) -> list[float]:
    """Return every number written with digits in ``text``, thousands separators removed."""
    return [to_float(match) for match in _NUMBER.findall(text)]


def problem_numbers(question: str) -> set[float]:
    """Return the quantities a problem names, with digits or with words such as 'three' and 'half'.

    A percentage also counts as its fraction, so '25%' gives 25 and 0.25.
    """
    values = set(numbers_of(question))
    for word in re.findall(r"[a-z]+", question.lower()):
        if word in _NUMBER_WORDS:
            values.add(float(_NUMBER_WORDS[word]))
    for match in re.findall(r"(\d+(?:\.\d+)?)\s*(?:%|percent)", question):
        values.add(float(match) / 100)
    return values


def same_quantity(a: float, b: float) -> bool:
    """Tell whether two operands are the same quantity, counting 25 and 0.25 (a percentage) as one."""
    return _close(a, b) or _close(a, b * 100) or _close(a * 100, b)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def equations_of(step: str) -> list[Equation]:
    """Return each arithmetic expression in ``step`` with the result it states; chains ``a = b = c`` give each link."""
    pieces = step.split("=")
    found = []
    for left, right in zip(pieces, pieces[1:]):
        tail = _EXPRESSION_TAIL.search(left).group(0)
        expression = re.sub(r"^[^\d(\-$.]+", "", tail).strip()
        expression = re.sub(r"^-(?=\s)", "", expression).strip()
        stated = _STATED.match(right)
        if not expression or stated is None or not _OPERATOR.search(expression):
            continue
        stated_value, stated_text = to_float(stated.group(1)), stated.group(1)
        # In a chain such as '12 / 2 = 2 * 3 = 6' the middle link states an expression, not a number.
        head = _EXPRESSION_HEAD.match(right).group(0).strip().rstrip(".,")
        if _OPERATOR.search(head):
            head_value = evaluate(head)
            if head_value is None:
                continue
            stated_value, stated_text = head_value, head
        found.append(Equation(expression, numbers_of(expression), stated_value, stated_text, evaluate(expression)))
    return found


def evaluate(expression: str) -> float | None:
    """Evaluate an arithmetic expression written with thousands separators, currency, percent, 'x' and '×'."""
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", expression)
    if "," in text:
        return None
    text = re.sub(r"(\d+(?:\.\d+)?)\s*%", r"(\1/100)", text)
    return safe_eval(text)


def result_matches(value: float, stated: float, stated_text: str) -> bool:
    """Tell whether a stated result is right, allowing rounding to the decimals it is written with.

    An integer result may also be the value rounded down, as in '10 / 3 = 3 full boxes'.
    """
    if _close(value, stated):
        return True
    decimals = len(stated_text.split(".")[1]) if "." in stated_text else 0
    if decimals and round(value, decimals) == round(stated, decimals):
        return True
    return decimals == 0 and int(value // 1) == stated


def _multiset_difference(left: list[float], right: list[float]) -> tuple[list[float], list[float]]:
    """Return the operands only in ``left`` and only in ``right``, matching equal quantities once."""
    remaining = list(right)
    only_left = []
    for value in left:
        match = next((i for i, other in enumerate(remaining) if same_quantity(value, other)), None)
        if match is None:
            only_left.append(value)
        else:
            remaining.pop(match)
    return only_left, remaining


def _step_operands(step: str) -> list[float]:
    return [operand for equation in equations_of(step) for operand in equation.operands]


def align_reference(operands: list[float], reference: list[str], position: int) -> int | None:
    """Return the index of the reference step that shares most operands with ``operands``, or None if none shares any.

    Ties go to the step at the same position, then to the earliest.
    """
    best, best_shared = None, 0
    for index, step in enumerate(reference):
        reference_operands = _step_operands(step)
        only_here, _ = _multiset_difference(operands, reference_operands)
        shared = len(operands) - len(only_here)
        if shared > best_shared or (shared == best_shared and shared > 0 and index == position):
            best, best_shared = index, shared
    return best


def diagnose_step(question: str, prefix: list[str], step: str, reference: list[str]) -> tuple[ErrorType | None, str, str]:
    """Check one step; return its error type (None when no rule flags it), the rule's detail and the reference step."""
    position = len(prefix)
    same_position = ""
    if reference:
        same_position = reference[min(position, len(reference) - 1)]
    from_problem = problem_numbers(question)
    from_steps = {value for earlier in prefix for value in numbers_of(earlier)}
    reference_values = {value for line in reference for value in numbers_of(line)}

    equations = equations_of(step)
    for equation in equations:
        if equation.value is not None and not result_matches(equation.value, equation.stated, equation.stated_text):
            return "execution", f"{equation.expression} is {equation.value:g}, not {equation.stated_text}", same_position

    if step.strip().startswith(ANSWER_PREFIX.strip()):
        return _check_answer_line(step, prefix, reference, same_position, from_problem)

    operands = [operand for equation in equations for operand in equation.operands]
    aligned = align_reference(operands, reference, position) if operands else None
    if aligned is not None:
        reference_step = reference[aligned]
        only_generated, only_reference = _multiset_difference(operands, _step_operands(reference_step))
        # Results of earlier links in the same step are as good as results of earlier steps.
        within_step = {e.stated for e in equations}
        for operand in only_generated:
            if any(same_quantity(operand, known) for known in from_problem | from_steps | within_step):
                continue
            if not only_reference and operand in COMMON_CONSTANTS:
                continue
            replaced_earlier_result = any(
                any(same_quantity(value, known) for known in from_steps)
                and not any(same_quantity(value, known) for known in from_problem)
                for value in only_reference)
            if replaced_earlier_result:
                return "reasoning", f"operand {operand:g} contradicts an earlier step", reference_step
            return "conceptual", f"operand {operand:g} is not in the problem or earlier steps", reference_step
        if not only_generated and not only_reference:
            generated_results = {e.value for e in equations if e.value is not None}
            expected_results = {e.value for e in equations_of(reference_step) if e.value is not None}
            new_results = [value for value in generated_results
                           if not any(_close(value, known) for known in expected_results | reference_values)]
            if new_results:
                return "method", f"same quantities as the reference step give {new_results[0]:g}", reference_step
    else:
        known = from_problem | from_steps | COMMON_CONSTANTS | reference_values
        for operand in operands:
            if not any(same_quantity(operand, value) for value in known):
                return "conceptual", f"operand {operand:g} is not in the problem or earlier steps", same_position

    # A value stated without a computation must come from somewhere. LaTeX steps are skipped
    # because exponents and indices there are numbers too.
    if "\\" not in step and "^" not in step:
        computed = {e.stated for e in equations} | {o for e in equations for o in e.operands}
        known = from_problem | from_steps | COMMON_CONSTANTS | reference_values | computed
        for value in numbers_of(step):
            if not any(_close(value, other) for other in known):
                return "reasoning", f"value {value:g} contradicts the earlier steps", same_position
    return None, "", same_position


def _check_answer_line(step: str, prefix: list[str], reference: list[str], same_position: str,
                       from_problem: set[float]) -> tuple[ErrorType | None, str, str]:
    """Flag an answer line whose value is not the last value the steps arrived at.

    Without any earlier value, an answer that is not a quantity of the problem came from
    nowhere, which counts as conceptual.
    """
    values = numbers_of(step[len(ANSWER_PREFIX.strip()):])
    last_values = next((numbers_of(earlier) for earlier in reversed(prefix) if numbers_of(earlier)), [])
    reference_step = reference[-1] if reference else same_position
    if not values:
        return None, "", reference_step
    if not last_values:
        if any(same_quantity(values[-1], known) for known in from_problem):
            return None, "", reference_step
        return "conceptual", f"answer {values[-1]:g} follows from no step and is not in the problem", reference_step
    last_equations = next((equations_of(earlier) for earlier in reversed(prefix) if equations_of(earlier)), [])
    last = last_equations[-1].stated if last_equations else last_values[-1]
    if not _close(values[-1], last) and not any(_close(values[-1], value) for value in last_values[-1:]):
        return "reasoning", f"answer {values[-1]:g} disagrees with the last step's {last:g}", reference_step
    return None, "", reference_step


def classify_step(question: str, prefix: list[str], step: str, reference: list[str]) -> ErrorType | None:
    """Return the error type of one step by the rules, or None when no rule flags it."""
    return diagnose_step(question, prefix, step, reference)[0]


def first_faulty_step(question: str, steps: list[str], answer: str | None, reference: list[str]) -> Fault | None:
    """Return the first step of a generated solution that a rule flags, the answer line included; None if none is."""
    lines = list(steps) + ([ANSWER_PREFIX + answer] if answer is not None else [])
    for index, step in enumerate(lines):
        error_type, detail, reference_step = diagnose_step(question, lines[:index], step, reference)
        if error_type is not None:
            return Fault(index, error_type, step, reference_step, detail)
    return None


def count_types(faults: list[Fault]) -> dict[str, int]:
    counts = Counter(fault.error_type for fault in faults)
    return {name: counts.get(name, 0) for name in ERROR_TYPES}

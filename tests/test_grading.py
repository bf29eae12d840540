"""Answer extraction and equivalence across GSM8K, MATH and AIME answer formats."""

import pytest

from repair.grading import answers_match, extract_answer, grade, last_boxed, to_number


@pytest.mark.parametrize(
    ("gold", "predicted", "expected"),
    [
        # GSM8K numbers: separators, negatives, units, dollar signs, decimals
        ("1,000", "1000", True),
        ("1000", "$1,000", True),
        ("18", "$18 dollars", True),
        ("-3", "-3 degrees", True),
        ("-3", "3", False),
        ("2.5", "2.50", True),
        ("72", "72 clips", True),
        ("72", "27", False),
        ("5", "3 + 2 = 5", True),
        ("25", "25%", True),
        ("0.5", "\\frac{1}{2}", True),
        # MATH LaTeX answers: fractions, radicals, tuples, degrees, text
        ("\\frac{14}{3}", "14/3", True),
        ("\\frac{14}{3}", "\\dfrac{14}{3}", True),
        ("\\frac{14}{3}", "4.5", False),
        ("3\\sqrt{13}", "3\\sqrt{13}", True),
        ("3\\sqrt{13}", "\\sqrt{117}", True),
        ("3\\sqrt{13}", "3\\sqrt{12}", False),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi)", False),
        ("90^\\circ", "90", True),
        ("\\text{Evelyn}", "Evelyn", True),
        ("\\text{Evelyn}", "evelyn", True),
        ("\\text{Evelyn}", "Bob", False),
        # AIME integers, with leading zeros as some solutions write them
        ("033", "33", True),
        ("204", "\\boxed{204}", True),
        ("204", "240", False),
    ],
)
def test_answers_match(gold, predicted, expected):
    assert answers_match(gold, predicted) is expected


def test_answers_match_missing_prediction():
    assert answers_match("5", None) is False
    assert answers_match("5", "  ") is False


def test_strict_extractor_reads_answer_line():
    text = "Step 1: 48 / 2 = 24\nStep 2: 48 + 24 = 72\nThe answer is: 72."
    assert extract_answer(text, "strict") == "72"


def test_strict_extractor_takes_last_answer_line():
    text = "The answer is: 3\nStep 2: more\nThe answer is: $\\frac{1}{2}$"
    assert extract_answer(text, "strict") == "\\frac{1}{2}"


def test_strict_extractor_without_answer_line():
    assert extract_answer("Step 1: 2 + 2 = 4\nSo she has 4 apples.", "strict") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1: 2 + 2 = 4\nSo she has 4 apples.", "4"),
        ("so the result is \\boxed{\\frac{3}{4}} in all", "\\frac{3}{4}"),
        ("Therefore the answer is 12 dollars\nThanks", "12 dollars"),
        ("no numbers at all", None),
    ],
)
def test_flexible_extractor_fallbacks(text, expected):
    assert extract_answer(text, "flexible") == expected


def test_grade_strict_and_flexible_differ():
    text = "Step 1: 48 + 24 = 72\nSo she sold 72 clips."
    assert grade("72", text) == {"strict": False, "flexible": True}


def test_last_boxed_nested_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"


def test_to_number_units_and_separators():
    assert to_number("$1,200 dollars") == 1200.0
    assert to_number("-\\frac{3}{4}") == -0.75
    assert to_number("none") is None

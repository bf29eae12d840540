"""First faulty step of a generated solution: the rules against hand-labelled step pairs.

Each case is a problem, the generated solution's earlier steps, the reference solution, the
step to judge, and the label written by reading the pair: execution (an arithmetic result is
false), conceptual (a quantity taken from nowhere or misread from the problem), method (another
operation or formula on the same quantities), reasoning (a value that contradicts an earlier
step), or None for a correct step. The labels were written before the rules were run.
"""

import pytest

from repair.faults import classify_step, first_faulty_step

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
           "How many clips did Natalia sell altogether in April and May?")
NATALIA_REF = ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips altogether in April and May."]
WENG = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"
WENG_REF = ["Weng earns 12/60 = $0.2 per minute.", "Working 50 minutes, she earned 0.2 x 50 = $10."]
BETTY = ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
         "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
         "How much more money does Betty need to buy the wallet?")
BETTY_REF = ["In the beginning, Betty has only 100 / 2 = $50.", "Betty's grandparents gave her 15 * 2 = $30.",
             "This means, Betty needs 100 - 50 - 30 - 15 = $5 more."]
JANET = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
         "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
         "How much in dollars does she make every day at the farmers' market?")
JANET_REF = ["Janet sells 16 - 3 - 4 = 9 duck eggs a day.", "She makes 9 * 2 = $18 every day at the farmer's market.",
             "The answer is: 18"]
JAMES = "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?"
JAMES_REF = ["He writes each friend 3*2=6 pages a week", "So he writes 6*2=12 pages every week",
             "That means he writes 12*52=624 pages a year"]
JOAN = ("Joan found 70 seashells on the beach. She gave Sam some of her seashells. She has 27 seashells left. "
        "How many seashells did she give to Sam?")
JOAN_REF = ["She gave Sam 70 - 27 = 43 seashells."]
SHIRTS = "A store had 1,500 shirts and sold 3 boxes of 250 shirts each. How many shirts are left?"
SHIRTS_REF = ["It sold 3 x 250 = 750 shirts.", "It has 1,500 - 750 = 750 shirts left."]
TEMPERATURE = "The temperature was 5 degrees in the morning and fell 12 degrees by night. What was the temperature at night?"
TEMPERATURE_REF = ["The temperature at night was 5 - 12 = -7 degrees."]
BILL = "Three friends split a $10 bill equally. How much does each pay?"
BILL_REF = ["Each pays 10 / 3 = $3.33."]
SALE = "A shirt costs $40 and is on sale for 25% off. What is the sale price?"
SALE_REF = ["The discount is 40 * 0.25 = $10.", "The sale price is 40 - 10 = $30."]

# (question, earlier generated steps, reference steps, step to judge, hand label)
CASES = [
    (NATALIA, [], NATALIA_REF, "Natalia sold 48/2 = 26 clips in May.", "execution"),
    (NATALIA, NATALIA_REF[:1], NATALIA_REF, "Natalia sold 48*24 = 1152 clips altogether.", "method"),
    (NATALIA, NATALIA_REF[:1], NATALIA_REF, "Natalia sold 48+24 = 72 clips altogether.", None),
    (NATALIA, [], NATALIA_REF, "Natalia sold 48/3 = 16 clips in May.", "conceptual"),
    (NATALIA, NATALIA_REF[:1], NATALIA_REF, "So in May she sold 20 clips.", "reasoning"),
    (WENG, [], WENG_REF, "Weng earns 12/60 = $0.2 per minute.", None),
    (WENG, WENG_REF[:1], WENG_REF, "Working 50 minutes, she earned 0.2 x 50 = $100.", "execution"),
    (WENG, WENG_REF[:1], WENG_REF, "She earned 0.2 x 45 = $9.", "conceptual"),
    (BETTY, [], BETTY_REF, "In the beginning, Betty has only 100 - 2 = $98.", "method"),
    (BETTY, BETTY_REF[:1], BETTY_REF, "Betty's grandparents gave her 15 * 2 = $30.", None),
    (BETTY, BETTY_REF[:2], BETTY_REF, "This means, Betty needs 100 - 40 - 30 - 15 = $15 more.", "reasoning"),
    (JANET, [], JANET_REF, "Janet sells 16 - 3 - 4 = 9 duck eggs a day.", None),
    (JANET, JANET_REF[:1], JANET_REF, "She makes 9 * 2 = $18 every day.", None),
    (JANET, JANET_REF[:1], JANET_REF, "She sells 11 eggs, so she makes 11 * 2 = $22.", "reasoning"),
    (JANET, JANET_REF[:2], JANET_REF, "The answer is: 16", "reasoning"),
    (JAMES, JAMES_REF[:2], JAMES_REF, "That means he writes 10*52=520 pages a year", "reasoning"),
    (JOAN, [], JOAN_REF, "She gave Sam 70 + 27 = 97 seashells.", "method"),
    (JOAN, [], JOAN_REF, "She gave Sam 70 - 17 = 53 seashells.", "conceptual"),
    (SHIRTS, SHIRTS_REF[:1], SHIRTS_REF, "It has 1,500 - 750 = 850 shirts left.", "execution"),
    (SHIRTS, SHIRTS_REF[:1], SHIRTS_REF, "It has 1,500 - 750 = 750 shirts left.", None),
    (TEMPERATURE, [], TEMPERATURE_REF, "The temperature at night was 5 - 12 = -7 degrees.", None),
    (TEMPERATURE, [], TEMPERATURE_REF, "The temperature at night was 12 - 5 = 7 degrees.", "method"),
    (BILL, [], BILL_REF, "Each pays 10 / 3 = $3.33.", None),
    (BILL, [], BILL_REF, "Each pays 10 / 3 = $3.03.", "execution"),
    (SALE, [], SALE_REF, "The discount is 40 * 25 = $1000.", "method"),
]


def test_cases_cover_every_label():
    labels = [case[-1] for case in CASES]
    assert len(CASES) >= 20
    for label in ("execution", "conceptual", "method", "reasoning", None):
        assert labels.count(label) >= 3, label


def test_rules_agree_with_hand_labels():
    disagreements = []
    for question, prefix, reference, step, label in CASES:
        found = classify_step(question, prefix, step, reference)
        if found != label:
            disagreements.append(f"{step!r}: rules {found}, hand label {label}")
    # At least 90% agreement, the same bar as 18 of 20.
    assert len(disagreements) <= len(CASES) // 10, "\n".join(disagreements)


@pytest.mark.parametrize("index", [0, 6, 18, 23])
def test_execution_cases_exact(index):
    question, prefix, reference, step, label = CASES[index]
    assert classify_step(question, prefix, step, reference) == "execution"


def test_first_faulty_step_in_solution():
    steps = ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48*24 = 1152 clips altogether."]
    fault = first_faulty_step(NATALIA, steps, "1152", NATALIA_REF)
    assert fault is not None
    assert fault.step_index == 1
    assert fault.error_type == "method"
    assert fault.step == steps[1]
    assert fault.reference_step == NATALIA_REF[1]


def test_first_faulty_step_answer_line():
    steps = ["Janet sells 16 - 3 - 4 = 9 duck eggs a day.", "She makes 9 * 2 = $18 every day."]
    fault = first_faulty_step(JANET, steps, "16", JANET_REF)
    assert fault is not None
    assert fault.step_index == 2
    assert fault.error_type == "reasoning"


def test_first_faulty_step_correct_solution():
    assert first_faulty_step(NATALIA, NATALIA_REF, "72", NATALIA_REF) is None


# Shapes seen in a 3-bit model's own solutions, checked after the hand-labelled set above.
def test_chain_with_expression_link():
    assert classify_step(SHIRTS, SHIRTS_REF[:1], "It has 1,500 - 750 = 750 * 1 = 750 shirts left.", SHIRTS_REF) is None
    assert classify_step(SHIRTS, SHIRTS_REF[:1], "It has 1,500 - 750 = 750 * 1 = 850 shirts left.", SHIRTS_REF) == "execution"


def test_answer_line_with_false_arithmetic():
    step = "The answer is: 16 * 4 = 6"
    assert classify_step(JANET, [], step, JANET_REF) == "execution"


def test_bare_answer_without_steps():
    assert classify_step(JANET, [], "The answer is: 12", JANET_REF) == "conceptual"
    assert classify_step(JANET, [], "The answer is: 16", JANET_REF) is None

"""The graders, case by case: expected values worked out by hand (IoUs, ratios), never recomputed with
the code. The labelled corpus (tests/data/grading, test_grading_corpus.py) measures agreement with a
strict judge on realistic responses; these tests pin each rule."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from curate.grading import (
    GRADE_TIME_LIMIT_S,
    GRADERS,
    GradingOptions,
    UnknownTaskError,
    check_ground_truth,
    extract_answer,
    format_score,
    grade,
    mathexpr,
    resolve_grader,
)
from curate.grading.deadline import run_with_deadline, time_left, time_limit
from curate.grading.extract import final_answer
from curate.grading.mathexpr import sympy_safe
from curate.grading.numbers import iter_numbers, words_to_digits

pytestmark = pytest.mark.timeout(120)


def tagged(answer: str) -> str:
    return f"<think>looking</think>\n<answer>{answer}</answer>"


# ---------------------------------------------------------------- extraction and format


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>a</think><answer> 42 </answer>", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>1</answer> then <answer>12", "12"),  # truncated output: no closing tag
        ("<answer></answer>", ""),
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{3} and later \\boxed{\\frac{1}{2}", "3"),  # the unbalanced last one is skipped
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literals
        ("\\boxed {7}", "7"),
        ("\\fbox{8}", "8"),
        ("\\boxed{1} but <answer>2</answer>", "2"),  # answer tags win over \boxed
        ("no answer here", None),
        ("}}}{{{\\boxed{", None),
        ("", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    "response, text, committed",
    [
        (tagged("42"), "42", True),
        (tagged("\\boxed{12}"), "12", True),  # Orsta: a box inside the answer tags
        (tagged("The answer is \\boxed{B}."), "B", True),
        (tagged("**Final answer:** 7"), "7", True),
        (tagged("\\boxed{3} or \\boxed{4}"), None, True),  # two boxes that disagree: a hedge
        (tagged("\\boxed{3} so \\boxed{3}"), "3", True),
        ("<think>a</think><answer>3</answer><answer>4</answer>", None, True),  # two final answers
        ("<think>a</think><answer>3</answer><answer> 3 </answer>", "3", True),
        ("<think>I will use <answer> tags</think><answer>5</answer>", "5", True),
        ("<think>counting: 1, 2, 3", None, True),  # cut off while thinking: nothing committed
        ("first \\boxed{6}, recounting gives \\boxed{7}", "7", True),  # free text corrects itself
        ("It is \\boxed{6}. Or \\boxed{7}.", None, True),  # two boxes, no correction: a hedge
        ("The answer is 3.\n\n**Final answer:** 4", None, True),  # two stated answers
        ("The answer is 3. Wait, I forgot one: the answer is 4.", "4", True),  # a told correction
        ("Adding them up, the answer is 42. Done", "42", True),
        ("There are 4 cats.", "There are 4 cats.", True),  # a short reply is its own answer
        ("Answer: B\nAnswer: C", None, True),  # two answer lines: a hedge
        ("Therefore, the correct option is D.", "the correct option is D", True),
        ("\\boxed{18} (or 20 if the ends count)", None, True),
        ("<think>5 <answer>5</answer></think>", None, True),  # tags inside the reasoning do not count
        ("<think>a</think><answer>3</answer><think>b</think><answer>4</answer>", None, True),
        ("x" * 700 + ". So it is probably 42", "So it is probably 42", False),  # a long reply's last sentence
    ],
)
def test_final_answer(response, text, committed):
    found = final_answer(response)
    assert (found.text, found.committed) == (text, committed)


def test_extract_answer_on_megabyte_inputs():
    assert extract_answer("\\boxed{" * 200_000) is None
    assert extract_answer("x" * 1_000_000 + "\\boxed{5}") == "5"
    assert extract_answer("<answer>" + "y" * 1_000_000) == "y" * 1_000_000


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>reason</think><answer>3</answer>", 1.0),
        ("  \n<think>\nmulti\nline\n</think>\n\n<answer>\n3\n</answer>\n ", 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("<answer>3</answer>", 0.0),
        ("<think>x</think>", 0.0),
        ("<think>x</think> and text <answer>3</answer>", 0.0),
        ("<think>x</think><answer>3</answer> trailing", 0.0),
        ("<think>x</think><answer>3</answer><answer>4</answer>", 0.0),
        ("<think>x</think><answer>3</answer> junk <answer>4</answer>", 0.0),
        ("<think>x<think>y</think><answer>3</answer>", 0.0),
        ("<think>x</think><answer>3", 0.0),  # truncated
        ("<answer>3</answer><think>x</think>", 0.0),
        ("", 0.0),
    ],
)
def test_format_score(response, expected):
    assert format_score(response) == expected


# ---------------------------------------------------------------- routing


@pytest.mark.parametrize(
    "task, verifier, expected",
    [
        ("counting", None, "counting"),
        ("color", None, "short_answer"),
        ("arithmetic", None, "math"),
        ("ocr", None, "ocr"),
        ("grounding", None, "grounding"),
        ("cv_detection", None, "detection"),
        ("cv_grounding", None, "grounding"),
        ("CV-Grounding", None, "grounding"),
        ("puzzle", None, "math"),
        ("chart", None, "math"),
        ("science", None, "math"),
        ("multiple_choice", None, "multiple_choice"),
        ("yes_no", None, "yes_no"),
        ("short_answer", None, "short_answer"),
        # the task type wins over a dataset's verifier hint; the hint serves when the task is unknown
        ("grounding", "detection", "grounding"),
        ("cv_grounding", "detection", "grounding"),
        ("math", "detection", "math"),
        ("ocr", "mathverify", "ocr"),
        ("counting", "mathverify", "counting"),
        ("some_source", "mathverify", "math"),
        ("some_source", "ocr", "ocr"),
        ("counting", "", "counting"),
        ("counting", "no_such_verifier", "counting"),
    ],
)
def test_resolve_grader(task, verifier, expected):
    assert resolve_grader(task, verifier) == expected


def test_unknown_task_names_task_and_verifier():
    with pytest.raises(UnknownTaskError, match="'nope'"):
        resolve_grader("nope")
    with pytest.raises(UnknownTaskError, match="'nope'.*'nope_either'"):
        resolve_grader("nope", "nope_either")
    with pytest.raises(ValueError):  # readers may catch ValueError
        grade("nope", "<answer>3</answer>", "3")
    with pytest.raises(UnknownTaskError):
        resolve_grader(None)


def test_route_is_reported_with_every_grade():
    result = grade("ocr", tagged("G4B-7HX"), "B4G-7XH", "mathverify")
    assert (result.grader, result.correct) == ("ocr", False)  # math-verify would let letters commute
    assert "mathverify" in result.route and "overruled" in result.route
    assert grade("some_source", tagged("3"), "3", "mathverify").route.startswith("verifier")


@pytest.mark.parametrize("grader", sorted(GRADERS))
def test_score_is_correct_and_partial_is_separate(grader):
    truth = {"grounding": "[[0, 0, 10, 10]]", "detection": "[[0, 0, 10, 10]]", "multiple_choice": "B",
             "yes_no": "yes", "ocr": "hello world"}.get(grader, "3")
    for response in (tagged(truth), tagged("[[0, 0, 10, 20]]"), tagged("hello wrld"), tagged("no")):
        result = grade(grader, response, truth)
        assert result.score == float(result.correct)
        assert 0.0 <= result.partial <= 1.0
        if grader not in ("ocr", "grounding", "detection"):
            assert result.partial == result.score


# ---------------------------------------------------------------- math


@pytest.mark.parametrize(
    "answer, truth",
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac12", "0.5"),
        ("x = 3", "3"),
        ("3", "x = 3"),
        ("x=3", "x = 3"),
        ("5 cm", "5"),
        ("5\\text{ cm}", "5"),
        ("5 cm", "5\\text{ cm}"),
        ("50\\%", "50"),
        ("50", "50\\%"),
        ("0.5", "50\\%"),
        ("50%", "0.5"),
        ("25%", "\\frac{1}{4}"),
        ("50%", "50\\%"),
        ("1,000", "1000"),
        ("1000.0", "1,000"),
        ("(x+1)^2", "x^2+2x+1"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
        ("2^{10}", "1024"),
        ("\\infty", "\\infty"),
        ("2,3", "\\{2, 3\\}"),
        ("60 km per hour", "60 km/h"),
        ("The solutions are x = 3 and x = 2.", "2, 3"),
        ("(B)", "B"),
        ("B. Oxygen", "B"),
        ("Option B", "B"),
        ("Oxygen", "B. Oxygen"),
        ("Red.", "red"),
        ("Yes, it is.", "Yes"),
        ("$42$", "\\boxed{42}"),
        # numbers math-verify misreads, and units
        ("5 dollars", "5"),
        ("$5", "5"),
        ("15 m/s", "15"),
        ("1.2 million", "1200000"),
        ("3e8", "300000000"),
        ("3 \\times 10^{8}", "300000000"),
        ("twelve", "12"),
        ("1,234,567", "1234567"),
        ("1.2 km", "1200 m"),
        ("1200 m", "1.2 km"),
        ("90^\\circ", "90"),
        ("3.1416", "3.14"),  # a truth with decimals is a rounded value
        ("２４", "24"),  # fullwidth digits
        ("There are 3 + 4 = 7 apples", "7"),
        ("-(-5)", "5"),  # negations and nesting go to math-verify, not to a number in them
        ("5!", "120"),
        ("2(3+1)", "8"),
        ("16 (48 - 32)", "16"),  # the value, then how it was found
        ("\\frac{1}{\\frac{1}{2}}", "2"),
    ],
)
def test_math_equivalent(answer, truth):
    assert grade("math", tagged(answer), truth).correct


@pytest.mark.parametrize(
    "answer, truth",
    [
        ("0.49", "\\frac{1}{2}"),
        ("-3", "3"),
        ("[0,1)", "(0,1]"),
        ("5", "50\\%"),
        ("0.5%", "50\\%"),  # two percentages compare as numbers
        ("0.25", "25"),  # no percent sign on either side: numbers differ
        ("der", "red"),  # sympy would call these equal (commuting symbols)
        ("C", "A"),
        ("the", "A"),
        ("2", "x^2"),
        ("", "3"),
        ("\\frac{1}{2", "0.5"),  # malformed inside answer tags
        ("12 cm", "12 m"),  # wrong unit
        ("5 kg", "5 m"),  # wrong dimension
        ("3.1", "3.14"),  # rounded further than the truth
        ("3.2", "3"),
        ("3 or 4", "3"),  # hedges
        ("between 3 and 5", "3"),
        ("A or B", "B"),
        ("not B", "B"),
        ("B and D", "B"),
        ("A. red B. blue C. green", "B"),  # a copied option list
        ("Yes and no", "Yes"),
        ("-(-5)", "-5"),
        ("-\\frac{3}{4}", "\\frac{3}{4}"),
        ("\\frac{1}{\\frac{2}{4}}", "\\frac{1}{2}"),
        ("16 (48 - 32)", "32"),
        ("3 (or 4)", "3"),
        ("-x", "x"),  # a one-letter truth is a variable, not a word
    ],
)
def test_math_not_equivalent(answer, truth):
    result = grade("math", tagged(answer), truth)
    assert (result.score, result.correct) == (0.0, False)


def test_math_reads_untagged_responses_from_the_end():
    assert grade("math", "First 12, then 7, so the answer is 42.", "42").correct
    assert grade("math", "I first thought 41, but it is 42", "42").correct
    assert not grade("math", "I first thought 42, but it is 41", "42").correct
    assert grade("math", "The answer is 42, not 41.", "42").correct
    assert grade("math", "so it is \\boxed{4}. Hmm, no: \\boxed{5}", "5").correct


def test_math_guards_sympy_against_giant_integers():
    assert sympy_safe("2^{10} + x^2") and sympy_safe("5!") and sympy_safe("a\\!b")
    blowups = (
        "9^{9^{9}}",
        "2**(10**9)",
        "(10^{5})^{10^{5}}",
        "2^{1234567890}",
        "100000!",
        "(3+4)!",
        "10^{20!}",
    )
    for blowup in blowups:
        assert not sympy_safe(blowup), blowup
    # graded (to 0: no single number either) instead of hanging the worker for hours
    assert grade("math", tagged("9^{9^{9}}"), "2").score == 0.0
    assert grade("math", tagged("100000!"), "3").score == 0.0


def test_math_off_the_main_thread():
    """math-verify's own timeouts raise ValueError outside the main thread; ours do not."""
    pairs = [
        ("0.5", "\\frac{1}{2}", 1.0),
        ("x = 3", "3", 1.0),
        ("(x+1)^2", "x^2+2x+1", 1.0),
        ("0.4", "0.5", 0.0),
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda p: grade("math", tagged(p[0]), p[1]).score, pairs * 3))
    assert scores == [p[2] for p in pairs] * 3


def test_math_timeout_leaves_later_grades_intact(monkeypatch):
    grade("math", tagged("(x+1)^2"), "x^2+2x+1")  # sympy loaded and warmed up, as in a worker
    monkeypatch.setattr(mathexpr, "MATH_TIMEOUT_S", 1e-4)
    for _ in range(5):
        result = grade("math", tagged("\\int_0^1 x^2 \\, dx + (y+1)^3"), "\\frac13 + y^3+3y^2+3y+1")
        assert 0.0 <= result.score <= 1.0
    monkeypatch.undo()
    assert grade("math", tagged("(x+1)^2"), "x^2+2x+1").score == 1.0
    assert grade("math", tagged("0.5"), "\\frac{1}{2}").score == 1.0


# ---------------------------------------------------------------- deadline


def _spin(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "done"


@pytest.mark.parametrize("in_thread", [False, True])
def test_deadline_interrupts_python_code_in_any_thread(in_thread):
    def guarded():
        with pytest.raises(TimeoutError):
            run_with_deadline(lambda: _spin(30), 0.2)
        assert run_with_deadline(lambda: _spin(0.01), 5) == "done"
        _spin(0.3)  # no stray exception arrives after the guarded call
        return True

    if in_thread:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            assert pool.submit(guarded).result(timeout=60)
    else:
        assert threading.current_thread() is threading.main_thread()
        assert guarded()


def test_deadline_passes_exceptions_and_values_through():
    with pytest.raises(KeyError):
        run_with_deadline(lambda: {}["missing"], 5)
    assert run_with_deadline(lambda: 7, 5) == 7


def test_time_limits_nest_and_deadlines_read_what_is_left():
    assert time_left() == float("inf")
    with time_limit(5.0):
        with time_limit(60.0):  # an inner limit never extends the outer one
            assert 4.0 < time_left() <= 5.0
        with time_limit(0.5):
            assert 0.0 < time_left() <= 0.5
    assert time_left() == float("inf")


def test_sympy_gets_only_what_is_left_of_the_grade_limit(monkeypatch):
    grade("math", tagged("(x+1)^2"), "x^2+2x+1")  # warmed up
    nested = tagged("\\frac{1}{" * 40 + "2" + "}" * 40)  # keeps sympy busy past any deadline
    monkeypatch.setattr(mathexpr, "MATH_TIMEOUT_S", 60.0)
    started = time.perf_counter()
    result = grade("math", nested, "\\frac{1}{2}")
    assert time.perf_counter() - started <= GRADE_TIME_LIMIT_S
    assert result.correct is False


def test_a_cold_worker_grades_within_the_limit_imports_included():
    """A fresh process's first math grade imports sympy and math-verify inside the limit."""
    code = (
        "import time; from curate.grading import grade, GRADE_TIME_LIMIT_S\n"
        "r = '<answer>' + '\\\\frac{1}{' * 40 + '2' + '}' * 40 + '</answer>'\n"
        "t = time.perf_counter(); grade('math', r, '\\\\frac{1}{2}'); t = time.perf_counter() - t\n"
        "print(t, GRADE_TIME_LIMIT_S)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=Path(__file__).parent.parent)
    seconds, limit = map(float, run.stdout.split())
    assert seconds <= limit, run.stdout


# Negations and nested fractions, as a strict judge reads them (the hardest ones a fuzzed matrix of
# answer forms × truths turned up: a sign apart from its number, a doubled sign, a fraction inside a
# fraction stated in a sentence, where math-verify alone reads the inner fraction).
@pytest.mark.parametrize(
    "response, truth, correct",
    [
        (tagged("- 5"), "5", False),
        (tagged("- 5"), "-5", True),
        (tagged("--5"), "-5", False),
        (tagged("--5"), "5", True),
        ("So the result is -(-5)", "5", True),
        ("So the result is -(-5)", "-5", False),
        (tagged("-(-(-5))"), "5", False),
        (tagged("\u22125"), "5", False),
        (tagged("\u20135"), "-5", True),
        (tagged("+-5"), "-5", True),
        (tagged("COVID-19"), "-19", False),
        (tagged("5 - 3"), "2", True),
        (tagged("3 - 5"), "2", False),
        (tagged("x - 5"), "-5", False),
        ("- 5 apples\n- 3 pears\nThere are 8 fruits.", "8", True),
        (tagged("The temperature dropped to - 5 \u00b0C"), "5 \u00b0C", False),
        ("So the result is \\frac{1}{\\frac{1}{2}}", "\\frac{1}{2}", False),
        ("So the result is \\frac{1}{\\frac{1}{2}}", "0.5", False),
        ("So the result is \\frac{1}{\\frac{1}{2}}", "2", True),
        ("So the result is \\frac{\\frac{1}{2}}{2}", "1/2", False),
        ("So the result is \\frac{\\frac{1}{2}}{2}", "\\frac{1}{4}", True),
        ("So the result is \\dfrac{3}{\\dfrac{1}{2}}", "6", True),
        ("So the result is \\tfrac{1}{2}", "0.5", True),
        ("So the result is -\\frac12", "-0.5", True),
        ("So the result is \\frac{-\\sqrt{4}}{4}", "-1/2", True),
        ("Let me check this. " * 40 + "So the result is \\frac{1}{\\frac{1}{2}}.", "2", True),
        ("Let me check this. " * 40 + "So the result is \\frac{1}{\\frac{1}{2}}.", "0.5", False),
        ("Let me check this. " * 40 + "Thus the value is $-\\frac{3}{4}$.", "0.75", False),
        (tagged("\\frac{1}{\\frac{1}{2}+\\frac{1}{2}}"), "\\frac{1}{2}", False),
        (tagged("\\frac{-3}{-4}"), "0.75", True),
        (tagged("-\\frac{-3}{4}"), "-0.75", False),
        (tagged("\\frac{1}{-2}"), "\\frac{1}{2}", False),
        ("The answer is $\\frac{1}{2}$ or $\\frac{1}{3}$.", "\\frac{1}{2}", False),
        ("The answer is \\frac{1}{2}, not \\frac{1}{3}.", "\\frac{1}{2}", True),
        ("The length is $\\frac{1}{2}$ m.", "0.5 m", True),
        ("The length is $\\frac{1}{2}$ m.", "0.5 km", False),
        ("Hence x = \\sqrt{16} = -4", "4", False),
    ],
)
def test_signs_and_nested_fractions(response, truth, correct):
    assert grade("math", response, truth).correct is correct


# ---------------------------------------------------------------- counting and numbers


@pytest.mark.parametrize(
    "response, truth, score, extracted",
    [
        (tagged("3"), "3", 1.0, "3"),
        (tagged("There are three dogs."), "3", 1.0, "3"),
        (tagged("twenty-one"), "21", 1.0, "21"),
        (tagged("3.0"), "3", 1.0, "3"),
        (tagged("3.5"), "3", 0.0, "3.5"),
        (tagged("1, 2, 3"), "3", 0.0, None),  # a list of counts commits to none
        ("I count 1, 2, 3. So 3", "3", 1.0, "3"),  # without tags: the conclusion
        ("1, 2, 3, 4", "4", 0.0, None),  # a short reply is its own answer: a list
        ("Counting them one by one. " * 30 + "I get 1, 2, 3, 4", "4", 1.0, "4"),  # a long one: its last number
        ("There are about 15 sheep.", "15", 0.0, None),
        ("<answer>\\boxed{\\geq 3}</answer>", "3", 0.0, None),
        ("There are 7 birds, maybe 8 if you count the hidden one.", "7", 0.0, None),
        (tagged("-3"), "3", 0.0, "-3"),
        (tagged("none"), "0", 1.0, "0"),
        (tagged("There are no cars."), "0", 1.0, "0"),
        (tagged("zero"), "0", 1.0, "0"),
        (tagged("a dozen"), "12", 1.0, "12"),
        (tagged("two dozen eggs"), "24", 1.0, "24"),
        (tagged("3 or 4"), "3", 0.0, None),
        (tagged("3-4"), "3", 0.0, None),
        (tagged("between 3 and 5"), "3", 0.0, None),
        (tagged("9 (maybe 10)"), "9", 0.0, None),
        (tagged("more than 15"), "15", 0.0, None),
        (tagged("There are 3 rows of 4 apples, so 12 in total."), "12", 1.0, "12"),
        (tagged("3 rows of 4 apples: 12 apples in total"), "12", 1.0, "12"),
        (tagged("12 apples in 3 rows"), "12", 1.0, "12"),
        (tagged("Starting with 5 and removing 2 leaves 3."), "3", 1.0, "3"),
        (tagged("The one on the left is red."), "1", 0.0, None),  # a pronoun, not a count
        (tagged("Only one of them is red."), "1", 1.0, "1"),
        ("\\boxed{4}", "\\boxed{4}", 1.0, "4"),
        (tagged("4"), "<answer>4</answer>", 1.0, "4"),
        (tagged("12"), "1", 0.0, "12"),
    ],
)
def test_counting(response, truth, score, extracted):
    result = grade("counting", response, truth)
    assert (result.score, result.correct, result.extracted) == (score, score == 1.0, extracted)


@pytest.mark.parametrize(
    "text, values",
    [
        ("twenty five apples", [25]),
        ("one two three", [1, 2, 3]),
        ("one hundred and five", [105]),
        ("three thousand two hundred", [3200]),
        ("nine hundred ninety nine thousand", [999000]),
        ("1,234 and 5", [1234, 5]),
        ("-3.5 or 2-3", [-3.5, 2, 3]),
        ("x2 .5", [2, 0.5]),
        ("3e8 and 1.2 million", [3e8, 1.2e6]),
        ("2.5k, 3 x 10^4, a dozen", [2500, 3e4, 12]),
        ("the one on the left, each one, one of them", [1]),
        ("no numbers", []),
        ("9" * 100, []),  # beyond MAX_DIGITS: not a number anyone means
    ],
)
def test_numbers_in_text(text, values):
    assert [float(v) for _, v in iter_numbers(text)] == values


def test_words_to_digits():
    assert words_to_digits("Route sixty-six Diner") == "Route 66 Diner"
    assert words_to_digits("one and two") == "1 and 2"
    assert words_to_digits("and one and") == "and 1 and"


# ---------------------------------------------------------------- OCR


@pytest.mark.parametrize(
    "answer, truth, correct",
    [
        ("YZXT", "YZXT", True),
        ("yzxt", "YZXT", True),
        ("Hello, World!", "hello world", True),  # case, whitespace and punctuation only
        ('The sign reads "STOP".', "STOP", True),
        ("The brand shown is Nike.", "Nike", True),
        ("\\text{HOTEL CALIFORNIA}", "Hotel California", True),
        ("1989", "1998", False),  # a misread year
        ("$12.05", "$12.50", False),
        ("12.50", "1250", False),  # the decimal point between digits is kept
        ("B4G-7XH", "G4B-7HX", False),
        ("STOP sign ahead", "STOP", False),  # extra words
        ("Route sixty-six", "ROUTE 66", False),  # a reading, not the text
        ("helo", "hello", False),  # short: exact
        # long lines (>= 30 characters) tolerate one edit per 30 characters
        ("The quick brown fox jumps over the lazy dgo", "The quick brown fox jumps over the lazy dog", False),
        ("The quick brown fox jumps over the lazy do", "The quick brown fox jumps over the lazy dog", True),
        ("The quick brown fux jumps over the lazy do", "The quick brown fox jumps over the lazy dog", False),
        ("", "dog", False),
    ],
)
def test_ocr(answer, truth, correct):
    assert grade("ocr", tagged(answer), truth).correct == correct


def test_ocr_typo_budget_is_an_option():
    line, typo = "The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy do"
    assert not grade("ocr", tagged(typo), line, options=GradingOptions(ocr_typo_min_chars=100)).correct
    assert grade("ocr", tagged(typo[:-1]), line, options=GradingOptions(ocr_typo_per_chars=15)).correct


def _lcs_reference(a: str, b: str) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_ocr_partial_credit_is_the_lcs_ratio():
    import random

    rng = random.Random(7)
    assert grade("ocr", tagged("hello world"), "helo wrld").partial == pytest.approx(18 / 20)
    for _ in range(200):
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(1, 25))).strip() or "a"
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(1, 25))).strip() or "b"
        a, b = " ".join(a.split()), " ".join(b.split())
        result = grade("ocr", tagged(a), b)
        expected = 1.0 if result.correct else 2 * _lcs_reference(a, b) / (len(a) + len(b))
        assert result.partial == pytest.approx(expected), (a, b)


# ---------------------------------------------------------------- boxes


def boxes(*coords) -> str:
    return tagged(str([{"bbox_2d": list(c)} for c in coords]))  # Python-literal quotes, as Orsta writes them


@pytest.mark.parametrize(
    "pred, truth, correct, partial",
    [
        ([(0, 0, 10, 10)], [(0, 0, 10, 10)], True, 1.0),
        ([(0, 0, 10, 10)], [(0, 0, 10, 20)], True, 0.5),  # IoU 100/200: exactly the threshold
        ([(0, 0, 10, 10)], [(0, 0, 10, 21)], False, 100 / 210),  # IoU just under 0.5
        ([(0, 0, 10, 10)], [(5, 0, 15, 10)], False, 1 / 3),  # IoU 50/150
        ([(10, 10, 0, 0)], [(0, 0, 10, 10)], True, 1.0),  # corners in the other order: same box
        # a missed small object: one of two true boxes found
        ([(20, 20, 50, 50)], [(0, 0, 10, 10), (20, 20, 50, 50)], False, 1 / 2),
        # an extra box, and a duplicate, are extras
        ([(0, 0, 10, 10), (100, 100, 110, 110)], [(0, 0, 10, 10)], False, 1 / 2),
        ([(0, 0, 10, 10), (0, 0, 10, 10)], [(0, 0, 10, 10)], False, 1 / 2),
        # one-to-one with the most pairs: greedy best-IoU first pairs P1-T1 (IoU 80/100) and leaves
        # P2-T2 at 40/130 < 0.5; the assignment pairs P1-T2 (40/80) and P2-T1 (100/130)
        ([(0, 0, 8, 10), (0, 0, 13, 10)], [(0, 0, 10, 10), (0, 0, 4, 10)], True, (0.5 + 100 / 130) / 2),
        # degenerate predictions match nothing
        ([(5, 5, 5, 10)], [(0, 0, 10, 10)], False, 0.0),
        ([(0, 0, 1e300, 1e300)], [(0, 0, 10, 10)], False, 0.0),
    ],
)
def test_grounding(pred, truth, correct, partial):
    result = grade("grounding", boxes(*pred), str([{"bbox_2d": list(t)} for t in truth]))
    assert (result.correct, result.partial) == (correct, pytest.approx(partial))


@pytest.mark.parametrize(
    "response",
    [
        tagged('[{"bbox_2d": [10, 20, 30, 40]}]'),
        tagged("[{'bbox_2d': [10, 20, 30, 40], 'label': 'cat'}]"),
        tagged('{"bbox_2d": [10, 20, 30, 40]}'),
        tagged("[10, 20, 30, 40]"),
        tagged("[[10, 20, 30, 40]]"),
        tagged('```json\n[\n  {"bbox_2d": [10.0, 20.0, 30.0, 40.0], "label": "cat"}\n]\n```'),
        tagged('[{"bbox": [10,20,30,40]}]'),
        'The cat is at [{"bbox_2d": [10, 20, 30, 40]}].',  # no tags: the tail is searched
    ],
)
def test_box_answer_forms(response):
    assert grade("grounding", response, '[{"bbox_2d": [10, 20, 30, 40]}]').score == 1.0


def test_box_ground_truth_forms():
    orsta = "<answer>\n[{'bbox_2d': [10, 20, 30, 40], 'label': 'cat'}]\n</answer>"
    assert grade("detection", tagged("[{'bbox_2d': [10, 20, 30, 40], 'label': 'cat'}]"), orsta).score == 1.0
    assert grade("grounding", tagged("[10, 20, 30, 40]"), [{"bbox_2d": [10, 20, 30, 40]}]).score == 1.0


def test_detection_labels_must_agree_but_grounding_ignores_them():
    truth = "[{'bbox_2d': [0, 0, 10, 10], 'label': 'dog'}]"
    cat = tagged("[{'bbox_2d': [0, 0, 10, 10], 'label': 'Cat'}]")
    dog = tagged("[{'bbox_2d': [0, 0, 10, 10], 'label': ' Dog '}]")
    unlabeled = tagged("[0, 0, 10, 10]")
    named = tagged("dog: [0, 0, 10, 10]")
    assert grade("detection", cat, truth).score == 0.0
    assert grade("detection", dog, truth).score == 1.0
    assert grade("detection", unlabeled, truth).score == 1.0  # one class on the truth side
    assert grade("detection", named, truth).score == 1.0
    assert grade("grounding", cat, truth).score == 1.0
    two = "[{'bbox_2d': [0, 0, 10, 10], 'label': 'dog'}, {'bbox_2d': [20, 20, 30, 30], 'label': 'cat'}]"
    assert not grade("detection", tagged("[[0, 0, 10, 10], [20, 20, 30, 30]]"), two).correct
    swapped = "[{'bbox_2d': [0, 0, 10, 10], 'label': 'cat'}, {'bbox_2d': [20, 20, 30, 30], 'label': 'dog'}]"
    assert not grade("detection", tagged(swapped), two).correct


def test_box_coordinate_conventions():
    truth = "[100, 50, 300, 150]"  # pixels of a 1000 x 500 image
    norm1000 = tagged("[100, 100, 300, 300]")
    norm1 = tagged("[0.1, 0.1, 0.3, 0.3]")
    qwen2 = tagged("<|box_start|>(100,100),(300,300)<|box_end|>")
    size = (1000, 500)
    assert grade("grounding", norm1, truth, image_size=size).correct  # 0-1 is recognised by its values
    assert not grade("grounding", norm1, truth).correct  # without the image size: as written
    qwen2_vl = GradingOptions(answer_box_format="norm1000")
    assert grade("grounding", norm1000, truth, options=qwen2_vl, image_size=size).correct
    assert grade("grounding", qwen2, truth, options=qwen2_vl, image_size=size).correct
    assert not grade("grounding", norm1000, truth, image_size=size).correct  # taken as pixels
    assert grade("grounding", norm1, "[100, 100, 300, 300]", options=GradingOptions(truth_box_format="norm1000")).correct


@pytest.mark.parametrize(
    "response, truth, score",
    [
        (tagged("[]"), "[]", 1.0),
        (tagged("There is none."), "[]", 1.0),
        (tagged("[0, 0, 5, 5]"), "[]", 0.0),
        (tagged("[]"), "[[0, 0, 5, 5]]", 0.0),
        (tagged("[nan, 0, 5, 5]"), "[[0, 0, 5, 5]]", 0.0),
        (tagged("[0, 0, 5, 5]"), "not boxes", 0.0),
        (tagged("[0, 0, 5, 5]"), "[[5, 5, 5, 0]]", 0.0),  # truth without a valid box
    ],
)
def test_box_edge_cases(response, truth, score):
    assert grade("grounding", response, truth).score == score


# ---------------------------------------------------------------- choices and short answers


@pytest.mark.parametrize(
    "response, letter",
    [
        (tagged("B"), "B"),
        (tagged("(B)"), "B"),
        (tagged("b"), "B"),
        (tagged("B."), "B"),
        (tagged("B) 42 apples"), "B"),
        (tagged("(B) 42 apples"), "B"),
        (tagged("Option B"), "B"),
        (tagged("**B**"), "B"),
        ("I compared them. The answer is (B).", "B"),
        ("Answer: B", "B"),
        ("\\boxed{B}", "B"),
        ("A cat sits on the mat.", None),  # the article is not option A
        (tagged("B. Oxygen"), "B"),
        (tagged("The answer is not A, it is B"), "B"),
        (tagged("Ｂ"), "B"),  # fullwidth
        (tagged("В"), None),  # Cyrillic Ve is not a Latin letter
        (tagged("B or C"), "B,C"),
        (tagged("B and D"), "B,D"),
        (tagged("A. 3 B. 4 C. 5 D. 6"), "A,B,C,D"),  # a copied option list
        (tagged("not B"), None),
        (tagged("B is wrong"), None),
        (tagged("A is correct"), "A"),
        (tagged("I think B"), "B"),
    ],
)
def test_multiple_choice_letters(response, letter):
    result = grade("multiple_choice", response, "B")
    assert result.extracted == letter
    assert result.score == float(letter == "B")


def test_multi_select_truth_needs_the_same_set():
    assert grade("multiple_choice", tagged("C, A"), "A, C").correct
    assert not grade("multiple_choice", tagged("A"), "A, C").correct
    assert not grade("multiple_choice", tagged("A, B, C"), "A, C").correct


def test_multiple_choice_truth_forms():
    assert grade("multiple_choice", tagged("C"), "(C) 12 apples").correct
    assert grade("multiple_choice", tagged("A"), "A").correct
    assert not grade("multiple_choice", "A cat sits on the mat.", "A").correct
    assert grade("multiple_choice", tagged("Blue"), "blue").correct  # truth is option text
    assert grade("multiple_choice", tagged("(C) Blue"), "blue").correct
    assert not grade("multiple_choice", tagged("C"), "blue").correct  # the options are unknown here


@pytest.mark.parametrize(
    "response, truth, score",
    [
        (tagged("Yes."), "yes", 1.0),
        (tagged("No, it is not."), "no", 1.0),
        (tagged("No"), "Yes", 0.0),
        ("Looking again... yes", "yes", 1.0),
        (tagged("I cannot tell"), "yes", 0.0),
        (tagged("Yes"), "maybe", 0.0),
        (tagged("Yes and no"), "yes", 0.0),
        (tagged("Maybe yes"), "yes", 0.0),
        (tagged("Yes, there is no doubt."), "yes", 1.0),
    ],
)
def test_yes_no(response, truth, score):
    assert grade("yes_no", response, truth).score == score


@pytest.mark.parametrize(
    "response, truth, score",
    [
        (tagged("yellow"), "yellow", 1.0),
        (tagged("The answer is: Yellow."), "yellow", 1.0),
        (tagged("a yellow"), "yellow", 1.0),
        (tagged("light yellow"), "yellow", 0.0),
        (tagged("two"), "2", 1.0),
        ("The umbrella she holds is yellow.", "yellow", 1.0),  # a sentence that states it
        ("It is not yellow.", "yellow", 0.0),
        ("Yellow or orange.", "yellow", 0.0),
        (tagged("A dog and a cat."), "cat, dog", 1.0),  # the same items in another order
        (tagged("cat, dog, bird"), "cat, dog", 0.0),
        (tagged(""), "yellow", 0.0),
        ("yellow", "yellow", 1.0),
    ],
)
def test_short_answer_and_color(response, truth, score):
    assert grade("color", response, truth).score == score
    assert grade("short_answer", response, truth).score == score


# ---------------------------------------------------------------- adversarial outputs


ADVERSARIAL = [
    "__import__('os').system('touch {sentinel}')",
    "<answer>__import__('pathlib').Path('{sentinel}').touch()</answer>",
    "\\boxed{__import__('pathlib').Path('{sentinel}').touch()}",
    "<answer>" + "{" * 5000 + "</answer>",
    "<answer>" + "}" * 5000 + "\\boxed{" * 5000,
    "\\boxed{" * 200_000,
    "9" * 1_000_000,
    "<answer>" + "[1,2,3,4]," * 100_000,
    "{'bbox_2d': [1, 2, 3, 4]}, " * 40_000,
    "twenty one " * 100_000,
    "$" * 1_000_000,
    "<answer>" + "a" * 1_000_000 + "</answer>",
    ("<answer>" + "\\frac{" * 1000 + "1" * 1000) * 300,
    "<think>" * 100_000 + "</answer>" * 100_000,
    "\x00\ud800\uffff\u202e" * 1000,
]


# A deadline exception that lands in a GC callback (hypothesis installs one) is swallowed there,
# reported as "unraisable", and raised again: that is the deadline working, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("grader", sorted(GRADERS))
def test_adversarial_outputs_are_graded_not_executed(grader, tmp_path, monkeypatch):
    # a hostile truth of 1000 "{" keeps math-verify busy until the deadline: make that short here
    monkeypatch.setattr(mathexpr, "MATH_TIMEOUT_S", 0.25)
    sentinel = tmp_path / "pwned"
    truth = {
        "grounding": "[[1, 2, 3, 4]]",
        "detection": "[{'bbox_2d': [1, 2, 3, 4], 'label': 'x'}]",
        "multiple_choice": "B",
        "yes_no": "yes",
        "counting": "3",
    }.get(grader, "0")
    for template in ADVERSARIAL:
        response = template.replace("{sentinel}", str(sentinel))
        result = grade(grader, response, truth)
        assert 0.0 <= result.score <= 1.0
        assert result.extracted is None or len(result.extracted) <= 1001
        # the adversarial strings hold no correct answer, except the box lists for box graders
        if grader not in ("grounding", "detection"):
            assert not result.correct, (grader, template[:40])
        # and the ground truth may be just as hostile
        assert 0.0 <= grade(grader, truth, response).score <= 1.0
        assert not sentinel.exists()


def test_ground_truth_problems_are_reported_for_readers():
    assert check_ground_truth("counting", "3") is None
    assert "integer" in check_ground_truth("counting", "many")
    assert check_ground_truth("grounding", "[[0, 0, 5, 5]]") is None
    assert check_ground_truth("grounding", "[]") is None
    assert "box" in check_ground_truth("grounding", "somewhere left")
    assert check_ground_truth("yes_no", "maybe") is not None
    assert check_ground_truth("multiple_choice", "(B) 12") is None
    assert check_ground_truth("math", "  ") is not None
    assert check_ground_truth("ocr", "") is not None
    with pytest.raises(UnknownTaskError):
        check_ground_truth("nope", "3")


def test_grade_accepts_non_string_values():
    assert grade("counting", tagged("3"), 3).correct
    assert grade("grounding", tagged("[1, 2, 3, 4]"), [[1, 2, 3, 4]]).correct
    result = grade("counting", None, "3")
    assert (result.score, result.correct, result.grader, result.extracted) == (0.0, False, "counting", None)


def test_box_format_follows_the_model_family(tmp_path):
    from curate.config import load_config
    from curate.grading.boxes import box_format_for_model
    from curate.scoring.stage import grading_options

    assert box_format_for_model("Qwen/Qwen2.5-VL-7B-Instruct") == "pixel"
    assert box_format_for_model("Qwen/Qwen2-VL-7B-Instruct") == "norm1000"
    assert box_format_for_model("OpenGVLab/InternVL2_5-8B") == "norm1000"
    assert box_format_for_model("my-model") == "auto"
    checkpoint = tmp_path / "global_step_2" / "huggingface"  # a local checkpoint: its config decides
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text('{"model_type": "qwen2_vl"}')
    assert box_format_for_model(str(checkpoint)) == "norm1000"
    cfg = load_config(overrides=["data.format=toy", "engine.model=Qwen/Qwen2-VL-2B-Instruct"])
    assert grading_options(cfg).answer_box_format == "norm1000"
    pinned = load_config(overrides=["data.format=toy", "engine.model=Qwen/Qwen2-VL-2B-Instruct",
                                     "grading.answer_box_format=pixel"])
    assert grading_options(pinned).answer_box_format == "pixel"


def test_grading_config_mistakes_name_the_key():
    from curate.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="grading.box_iou"):
        load_config(overrides=["grading.box_iou=1.5"])
    with pytest.raises(ConfigError, match="grading.answer_box_format"):
        load_config(overrides=["grading.answer_box_format=pixels"])
    with pytest.raises(ConfigError, match="grading.box_io"):
        load_config(overrides=["grading.box_io=0.5"])

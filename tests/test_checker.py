"""Tests of the questionnaire checker (course.quiz, course.tools.progress): every kind of question right, wrong,
partly right, empty and hostile; notebooks mangled the ways learners mangle them; `course check` and
`course progress`; and every chapter's questionnaire graded with its own model answers."""
import copy
import hashlib
import json
import linecache
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import course.quiz as quiz
from course.quiz import grading as qgrading
from course.quiz import keys as qkeys
from course.tools.progress import load_progress, run_progress
from course.quiz.keys import (NotebookError, compile_keys, decode_keys, load_keys, notebook_questions, parse_key_cell, validate_key, write_keys)
from course.quiz import check
from course.quiz.checker import check_model_answers, check_notebook, lint_questionnaire
from course.tools.progress import run_check
from course.quiz.grading import grade, model_answer

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "quiz" / "98_fixture_quiz.ipynb"
KEYS = notebook_questions(FIXTURE)["keys"]
PY_KEY = KEYS["98.06"]  # a code question without torch: its grading process starts fast


# ---------------------------------------------------------------- helpers

def load_nb(path=FIXTURE) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def is_slot(cell, qid) -> bool:
    return cell["cell_type"] == "code" and f'check("{qid}"' in "".join(cell["source"])


def learner_copy(tmp_path, answers: dict | None = None, name="98_mine.ipynb", edit=None) -> Path:
    "The fixture as a learner sees it (no answer cells), with the slots of `answers` replaced by the given sources."
    nb = load_nb()
    nb["cells"] = [c for c in nb["cells"] if not "".join(c["source"]).startswith("#| answer")]
    for c in nb["cells"]:
        for qid, src in (answers or {}).items():
            if is_slot(c, qid): c["source"] = src
    if edit: edit(nb)
    path = tmp_path / "work" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    return path


RIGHT = {"98.01": 'check("98.01", "b")', "98.02": 'check("98.02", "a, c")', "98.03": 'check("98.03", "0.95")',
         "98.04": 'check("98.04", "Broadcasting")',
         "98.05": "import torch\ndef mse(preds, targets):\n    return ((preds - targets)**2).mean()\ncheck(\"98.05\", mse)",
         "98.06": "def double(xs):\n    return [2 * x for x in xs]\ncheck(\"98.06\", double)",
         "98.07": 'check("98.07", """A model can memorise the images it was trained on, so we measure it on images it has never seen, which tells us how it generalises.""")',
         "98.08": 'check("98.08", """When a few outliers would dominate a squared loss.""")'}
NON_CODE_RIGHT = {q: s for q, s in RIGHT.items() if KEYS[q]["kind"] != "code"}


@pytest.fixture
def keys_in(tmp_path, monkeypatch):
    "Ship the fixture chapter's key file in a temporary keys folder, as the build would in course/keys/."
    folder = tmp_path / "keys"
    write_keys(FIXTURE.parent, folder)
    monkeypatch.setattr(qkeys, "keys_dir", lambda: folder)
    return folder


def by_id(results):
    return {r.qid: r for r in results}


# ---------------------------------------------------------------- the format

def test_parse_key_cell_reads_literals_only():
    k = parse_key_cell('#| answer 04.02\nkey(kind="number", section="S", value=-0.5, tol=1e-3, hint="h")')
    assert k == {"id": "04.02", "kind": "number", "section": "S", "value": -0.5, "tol": 1e-3, "hint": "h"}
    for src, words in [('#| answer 04.02\nkey(kind="number", section="S", value=1/2)', "value= must be a literal"),
                       ('#| answer 04.02\nkey(kind="open", section="S", model=open("x").read())', "model= must be a literal"),
                       ('#| answer 04.02\nimport os\nkey(kind="open", section="S", model="m")', "exactly one"),
                       ('#| answer 04.02\nkey(kind="open", section="S")', "needs model="),
                       ('#| answer 04.02\nkey(kind="open", section="S", model="m", colour=1)', "unknown field"),
                       ('#| answer 04.02\nkey(kind="code", section="S", name="f", solution="x", tests=[("t", "assert (")])', "not valid Python"),
                       ('#| answer 04.02\nkey(kind="concepts", section="S", model="m", ideas=[{"name": "n", "any": ["x"]}], samples=[("a", 1)])', "at least 3")]:
        with pytest.raises(ValueError, match="04.02") as e: parse_key_cell(src)
        assert words in str(e.value)
    with pytest.raises(ValueError, match="first line"): parse_key_cell('key(kind="open", section="S", model="m")')


def test_fixture_notebook_is_healthy():
    "The fixture is well formed; what the lint of issue 14 asks beyond that (imports, rubric phrases, balance) it lacks on purpose, and the lint says so."
    problems = lint_questionnaire(FIXTURE, run=False)
    known = ("does not import hint, check_all", "98.07: idea", "always 'b' wins 50%", "the longest option wins 50%")
    assert all(any(k in p for k in known) for p in problems), problems
    assert all(any(k in p for p in problems) for k in known), problems
    assert set(KEYS) == {f"98.0{i}" for i in range(1, 9)}
    assert KEYS["98.01"]["options"] == ["a", "b", "c", "d"] and "(4, 3)" in KEYS["98.01"]["question"]


def test_lint_finds_authoring_mistakes(tmp_path):
    nb = load_nb()
    for c in nb["cells"]:
        src = "".join(c["source"])
        if src.startswith("#| answer 98.03"): c["source"] = src.replace('section="Measuring accuracy"', 'section="Nowhere"')
        if src.startswith("#| answer 98.07"): c["source"] = src.replace('("memorise, unseen, generalise", 0.0)', '("The model memorises.", 1.0)')
    nb["cells"] = [c for c in nb["cells"] if not is_slot(c, "98.02")]
    path = tmp_path / "98_bad.ipynb"
    path.write_text(json.dumps(nb))
    problems = "\n".join(lint_questionnaire(path, counts=True))
    assert "98.03: section 'Nowhere'" in problems and "98.02: no answer slot" in problems
    assert "98.07: sample marked 1.0" in problems and "only 8 questions" in problems
    # the grading runs of the lint: 98.06's tests let a function that returns its input pass a case
    assert "98.06: a no-op answer that returns its first argument scores 0.33" in problems
    assert "98.05: a no-op" not in problems and "98.05: the model answer" not in problems and "pasted" not in problems


# ---------------------------------------------------------------- key files

def test_write_keys_is_deterministic_and_reports_stale(tmp_path):
    nbs, out = tmp_path / "nbs", tmp_path / "keys"
    nbs.mkdir()
    (nbs / FIXTURE.name).write_bytes(FIXTURE.read_bytes())
    assert write_keys(nbs, out, check=True) == [str(out / "98.key")] and not out.exists()
    assert write_keys(nbs, out) == [str(out / "98.key")]
    first = (out / "98.key").read_bytes()
    assert write_keys(nbs, out) == [] and write_keys(nbs, out, check=True) == []
    assert (out / "98.key").read_bytes() == first == compile_keys([nbs / FIXTURE.name])["98"]
    assert b"broadcasting" not in first and b"98.04" not in first  # not readable by accident
    data = decode_keys(first)
    assert data["keys"]["98.04"]["accept"][0] == "broadcasting" and data["title"].startswith("A fixture chapter")
    # a changed key makes the file stale; check=True writes nothing
    nb = load_nb()
    for c in nb["cells"]:
        if "".join(c["source"]).startswith("#| answer 98.03"): c["source"] = "".join(c["source"]).replace("0.95", "0.96")
    (nbs / FIXTURE.name).write_text(json.dumps(nb))
    assert write_keys(nbs, out, check=True) == [str(out / "98.key")] and (out / "98.key").read_bytes() == first
    (out / "42.key").write_bytes(b"orphan")
    assert write_keys(nbs, out) == [str(out / "42.key"), str(out / "98.key")]
    assert not (out / "42.key").exists() and load_keys("98", out)["98.03"]["value"] == 0.96


def test_compile_keys_rejects_bad_key_cells(tmp_path):
    nb = load_nb()
    for c in nb["cells"]:
        if "".join(c["source"]).startswith("#| answer 98.03"): c["source"] = '#| answer 98.03\nkey(kind="number", section="S", value=float("0.95"))'
    path = tmp_path / "98_x.ipynb"
    path.write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="98.03"): compile_keys([path])


def test_load_keys_of_a_damaged_or_missing_file(tmp_path):
    assert load_keys("77", tmp_path) == {}
    (tmp_path / "77.key").write_bytes(b"course-keys 1\nnot base64 at all!!\n")
    with pytest.raises(ValueError, match="damaged"): load_keys("77", tmp_path)


# ---------------------------------------------------------------- choice, number, short

@pytest.mark.parametrize("answer,score", [("b", 1), ("B", 1), ("(b)", 1), ("b)", 1), (" b. ", 1), (["b"], 1), ("a", 0), ("b, c", 0),
                                          ("", 0), (None, 0), ("zzz", 0), ("e", 0), (42, 0), ("a" * 100_000, 0)])
def test_choice_single(answer, score):
    assert grade(KEYS["98.01"], answer).score == score


def test_choice_feedback_and_partial_credit():
    k = KEYS["98.02"]
    for a in ["a, c", "a,c", "A and C", "(a) (c)", ["c", "a"], "ac", "c;a"]: assert grade(k, a).verdict == "correct", a
    r = grade(k, "a")
    assert (r.verdict, r.score) == ("partly", 0.5) and "missed 1" in r.feedback
    r = grade(k, "a, b")
    assert r.score == 0 and "hyper-parameter" in r.feedback
    assert grade(k, "a, b, c, d").score == 0  # ticking everything does not pay
    assert "no option e" in grade(k, "a, e").feedback
    assert grade(KEYS["98.01"], "c").feedback.startswith("(c) Broadcasting")
    assert grade(k, "").verdict == "not answered" and grade(k, []).verdict == "not answered"


@pytest.mark.parametrize("answer,score", [(0.95, 1), ("0.95", 1), ("0.952", 1), ("95%", 1), ("95 %", 1), ("0,95", 1), ("380/400", 1),
                                          ("about 0.95 accuracy", 1), (0.9, 0), (95, 0), ("0.96", 0), ("-0.95", 0), ("3 and 5", 0),
                                          (None, 0), ("", 0), ("abc", 0), (True, 0), ("nan", 0), (float("inf"), 0), ([0.95], 0),
                                          ("9" * 5000, 0)])
def test_number(answer, score):
    assert grade(KEYS["98.03"], answer).score == score


def test_number_feedback():
    k = KEYS["98.03"]
    assert "scale" in grade(k, 95).feedback and "Close" in grade(k, 0.96).feedback and "sign" in grade(k, -0.95).feedback
    assert "one" in grade(k, "3 and 5").feedback and "no number" in grade(k, "lots").feedback
    np = pytest.importorskip("numpy")
    assert grade(k, np.float32(0.95)).score == 1 and grade(k, np.array([0.95])).score == 0
    assert grade(validate_key("04.01", dict(kind="number", section="S", value=2e-3, rel=0.1)), "2.1e-3").score == 1


@pytest.mark.parametrize("answer,score", [("broadcasting", 1), ("Broadcasting.", 1), ("BROADCAST", 1), (" broad-casting ", 1),
                                          ("broadcastings", 1), ("braodcasting", 1), ("it is called broadcasting", 1),
                                          ("vectorisation", 0), ("not broadcasting", 0), ("slicing", 0), ("", 0), (None, 0),
                                          ("broadcasting " * 20, 0), ("b", 0), ("\x00\x01", 0), (3, 0)])
def test_short(answer, score):
    assert grade(KEYS["98.04"], answer).score == score


def test_short_close_forms_get_targeted_feedback():
    k = KEYS["98.04"]
    for a in ["Vectorisation", "vectorization", "it's vectorisation"]:
        r = grade(k, a)
        assert r.verdict == "wrong" and "Vectorisation is why" in r.feedback, a
    k2 = validate_key("04.01", dict(kind="short", section="S", accept=["ReLU"], close={"ELU": "Close: ELU is smooth below zero."}))
    assert grade(k2, "relu").score == 1 and grade(k2, "elu").feedback.startswith("Close") and grade(k2, "gelu").score == 0


# ---------------------------------------------------------------- concepts and open

def test_concepts_samples_regression():
    k = KEYS["98.07"]
    for text, expected in k["samples"]:
        assert qgrading.sample_ok(expected, grade(k, text).score), (text, grade(k, text))


def test_concepts_right_partly_wrong_and_feedback():
    k = KEYS["98.07"]
    assert grade(k, k["model"]).score == 1
    r = grade(k, "The model may have memorised the training set.")
    assert r.verdict == "partly" and "Missing: validation data is new" in r.feedback and r.section == "Measuring accuracy"
    assert grade(k, "I don't know.").score == 0


@pytest.mark.parametrize("hostile", [
    "Why do we measure accuracy on a validation set rather than on the training set?",  # the question pasted
    "why do we measure accuracy on a validation set rather than on the training set",
    "memorise, unseen, generalise, overfit",                                              # a keyword list
    "memorise\nunseen\ngeneralisation",
    "memorised unseen generalises overfitting new data",
    "The model has not memorised the training set and it does not generalise.",           # the opposite
    "It never generalises, whatever the data.",
])
def test_concepts_hostile_answers_do_not_pass(hostile):
    assert grade(KEYS["98.07"], hostile).score < 0.34


def test_concepts_huge_answer_and_negation_scope():
    k = KEYS["98.07"]
    assert grade(k, "It memorises and generalises to unseen data. " * 500).score == 0
    assert qgrading.negated("the loss does not go down", 9, 25) and not qgrading.negated("not only does the loss go down", 18, 30)
    assert not qgrading.negated("without a schedule, the loss goes down", 20, 38)


def test_open_question():
    k = KEYS["98.08"]
    r = grade(k, "When the data has outliers.")
    assert (r.verdict, r.score) == ("answered", 1) and "outliers" in r.model and "Model answer" in str(r)
    assert grade(k, "idk").score == 0 and grade(k, "").verdict == "not answered"
    assert grade(k, "Describe a task where you would choose the mean absolute error").score == 0  # the question copied


# ---------------------------------------------------------------- code

def code(src, k=PY_KEY, **kw):
    return grade(k, src, **kw)


def test_code_right_partly_wrong_empty(monkeypatch):
    assert code(KEYS["98.06"]["solution"]).verdict == "correct"
    r = code("def double(xs):\n    return [2 * x for x in xs if x > 0]\ncheck('98.06', double)")
    assert (r.verdict, round(r.score, 2)) == ("partly", 0.67) and "'negative numbers' fails" in r.feedback
    r = code("def double(xs):\n    return xs")
    assert r.verdict == "partly" and "'a list of integers' fails." in r.feedback and "expected" not in r.feedback
    revealing = {**PY_KEY, "reveal": True}
    assert "expected [2, 4, 6]" in code("def double(xs):\n    return xs", revealing).feedback
    assert code("def double(xs):\n    return None").verdict == "wrong"
    monkeypatch.setattr(qgrading, "run_code", lambda *a, **k: pytest.fail("a stub must not be run"))
    for stub in ["def double(xs):\n    ...\ncheck('98.06', double)", "def double(xs):\n    'Doubles.'\n    pass", "", None,
                 "def double(xs):\n    raise NotImplementedError"]:
        assert code(stub).verdict == "not answered", stub


@pytest.mark.parametrize("src,words", [
    ("def double(xs):\n    while True: pass", "case 'an empty list' ran longer than 1 s"),
    ("while True: pass\ndef double(xs): return xs", "your cell, before the tests ran longer than 1 s"),
    ("def double(xs):\n    raise ValueError('boom')", "raised ValueError"),
    ("def double(xs):\n    print('x' * 5_000_000)\n    return [2 * x for x in xs]", "printed too much output"),
    ("def double(xs):\n    while True: print('spam')", "printed too much output"),
    ("import sys\nsys.exit(3)", "called exit()/sys.exit()"),
    ("def double(xs):\n    exit()", "called exit()/sys.exit()"),
    ("import os\nos._exit(0)", "ended the grading process early"),
    ("x = bytearray(6 * 1024**3)\ndef double(xs): return xs", "more memory than allowed"),
    ("def double(xs):\n    return [0] * (10**10)", "more memory than allowed"),
    ("import ctypes\nctypes.string_at(0)", "crashed (signal SIGSEGV)"),
    ("def double(xs)\n    return xs", "SyntaxError (line 1"),
    ("import no_such_module_here", "imports something that isn't available"),
    ("def triple(xs): return xs", "doesn't define `double`"),
    ("def double(xs):\n    return double(xs)", "RecursionError"),
    ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "killed (signal SIGKILL)"),
])
def test_code_hostile_answers_become_feedback(src, words):
    r = code(src, timeout=1)
    assert r.score < 1 and r.verdict in ("wrong", "partly") and words in r.feedback, r


def test_imports_the_tests_need_happen_before_the_clock_starts():
    "Tests that import about two seconds of CPU time of modules still pass a right answer under a one-second CPU limit."
    heavy = {**PY_KEY, "tests": [("heavy imports", "import torch.optim\nfrom sklearn.linear_model import LogisticRegression\nassert double([1]) == [2]")]}
    assert code("def double(xs):\n    return [x * 2 for x in xs]", heavy, timeout=1).verdict == "correct"


def test_code_with_a_broken_setup():
    broken = {**PY_KEY, "setup": "import no_such_module_here"}
    r = code(KEYS["98.06"]["solution"], broken)
    assert r.verdict == "error" and "not your answer's fault" in r.feedback


# ---------------------------------------------------------------- check() in a live notebook

def run_cell(src: str, ns: dict, n=[0]):
    "Run `src` as IPython runs a cell: compiled under a cell name whose source linecache knows."
    n[0] += 1
    name = f"<ipython-input-{n[0]}-test>"
    linecache.cache[name] = (len(src), None, src.splitlines(True), name)
    exec(compile(src, name, "exec"), ns)


def test_live_check_key_hint_and_check_all(monkeypatch, capsys):
    monkeypatch.setattr(quiz, "_SESSION_KEYS", {})
    monkeypatch.setattr(quiz, "_SESSION_ANSWERS", {})
    ns = {"check": quiz.check, "key": quiz.key, "hint": quiz.hint, "check_all": quiz.check_all}
    cells = [c for c in load_nb()["cells"] if c["cell_type"] == "code"]
    for c in cells: run_cell("".join(c["source"]), ns)  # the source notebook as the build runs it: slots are blank
    out = capsys.readouterr().out
    assert out.count("not answered") == 8 and "Traceback" not in out
    assert set(quiz._SESSION_KEYS) == set(KEYS)
    run_cell('check("98.04", "broadcast")', ns)
    run_cell(RIGHT["98.06"], ns)
    run_cell("def double(xs):\n    return xs\ncheck('98.06', double)", ns)
    run_cell("def double(xs):\n    return [x * 2 for x in xs]", ns)
    run_cell('check("98.06", double)', ns)  # the function defined in an earlier cell: its own source is graded
    run_cell('hint("98.01")', ns)
    out = capsys.readouterr().out
    assert "✓ 98.04 correct" in out and out.count("✓ 98.06 correct") == 2 and "◐ 98.06 partly" in out
    assert "Hint for 98.01: Line the shapes up" in out and "Section: Tensors and shapes" in out
    results = quiz.check_all(show=False)
    assert {r.qid: r.verdict for r in results}["98.06"] == "correct" and len(results) == 8
    assert quiz.check("98.04", show=False).verdict == "correct"  # re-checks the answer given last


def test_live_check_never_raises(capsys):
    for args in [(None,), (123, "x"), ("98.01", object()), ("98.03", float("nan")), ("not-an-id", "b"), ("98.99", "b"),
                 ("98.03", {"a": 1}), ("98.04", b"bytes")]:
        r = check(*args, show=False)
        assert r.verdict in ("error", "wrong", "not answered"), (args, r)
    check("98.01", "b")  # outside IPython the result is printed
    assert "98.01" in capsys.readouterr().out
    html = qgrading.Result("98.01", "choice", "wrong", 0, 1, "<script>", "Tensors and shapes")._repr_html_()
    assert "&lt;script&gt;" in html and 'href="#Tensors-and-shapes"' in html


# ---------------------------------------------------------------- check_notebook: reading answers from files

def test_blank_stripped_notebook_scores_zero_and_source_notebook_too(tmp_path, keys_in):
    for path, keys in [(learner_copy(tmp_path), KEYS), (FIXTURE, None)]:  # the source's answer cells are ignored: keys come from the package
        results = check_notebook(path, keys=keys)
        assert len(results) == 8 and all(r.score == 0 and r.verdict == "not answered" for r in results), results


def test_filled_notebook_scores_full_marks(tmp_path):
    results = check_notebook(learner_copy(tmp_path, RIGHT), keys=KEYS)
    assert [r.verdict for r in results] == ["correct"] * 7 + ["answered"], results
    assert sum(r.score for r in results) == 8


def test_model_answers_of_the_fixture_score_full_marks():
    assert all(r.score == r.points for r in check_model_answers(FIXTURE))
    assert model_answer(KEYS["98.02"]) == "a, c" and model_answer(KEYS["98.04"]) == "broadcasting"


def test_hostile_code_does_not_stop_the_other_questions(tmp_path):
    answers = {**NON_CODE_RIGHT, "98.06": "def double(xs):\n    while True: pass\ncheck('98.06', double)"}
    r = by_id(check_notebook(learner_copy(tmp_path, answers), keys=KEYS, timeout=1))
    assert "ran longer than 1 s" in r["98.06"].feedback and r["98.05"].verdict == "not answered"
    assert all(r[q].score == 1 for q in NON_CODE_RIGHT)


def test_answers_sharing_a_grading_process_stay_isolated():
    "A loop, an exit, a crash or a poisoned module in one answer does not reach the answers graded after it."
    right = KEYS["98.06"]["solution"]
    answers = ["def double(xs):\n    while True: pass", right, "import sys\nsys.exit(1)", right,
               "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "import json\njson.dumps = None\n" + right, right,
               "import os\nos.kill(os.getppid(), 9)", right]
    results = qgrading.grade_many([(PY_KEY, a) for a in answers], timeout=1)
    assert [r.verdict for r in results] == ["wrong", "correct", "wrong", "correct", "wrong", "correct", "correct", "wrong", "correct"], results
    assert "ran longer" in results[0].feedback and "sys.exit" in results[2].feedback and "SIGSEGV" in results[4].feedback


def test_cells_deleted_duplicated_moved_and_retyped(tmp_path):
    def edit(nb):
        cells = nb["cells"]
        slot = lambda q: next(c for c in cells if is_slot(c, q))
        cells.remove(slot("98.03"))                                           # deleted
        dup = copy.deepcopy(slot("98.04")); dup["source"] = 'check("98.04", "")'
        cells.append(dup)                                                     # duplicated, the copy blank
        s1 = slot("98.01"); s1["cell_type"] = "markdown"; s1.pop("outputs"); s1.pop("execution_count")  # retyped
        s6 = slot("98.06"); s6["source"] = 'check("98.06", double)'
        cells.insert(0, {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                         "source": "def double(xs):\n    return [x + x for x in xs]"})  # the function moved to the top
        cells.reverse()                                                       # everything moved
    r = by_id(check_notebook(learner_copy(tmp_path, {**NON_CODE_RIGHT, "98.06": RIGHT["98.06"]}, edit=edit), keys=KEYS))
    assert r["98.03"].verdict == "missing" and "deleted" in r["98.03"].feedback
    assert r["98.04"].verdict == "correct" and "2 cells answer 98.04" in r["98.04"].feedback
    assert r["98.01"].verdict == "not answered" and "turn it back into code" in r["98.01"].feedback
    assert r["98.06"].verdict == "correct" and "another cell" in r["98.06"].feedback
    assert r["98.02"].verdict == "correct"


def test_answers_given_as_names_arithmetic_and_unreadable_expressions(tmp_path):
    answers = {"98.04": 'term = "broadcasting"\ncheck("98.04", term)', "98.03": 'check("98.03", 380 / 400)',
               "98.01": 'x = compute()\ncheck("98.01", x)', "98.02": 'check("98.02", pick("a"))',
               "98.07": 'check("98.07", """unclosed', "98.08": 'check(qid="98.08", answer="When outliers would dominate the squares.")'}
    r = by_id(check_notebook(learner_copy(tmp_path, answers), keys=KEYS))
    assert r["98.04"].score == 1 and r["98.03"].score == 1 and r["98.08"].verdict == "answered"
    assert r["98.01"].verdict == "error" and "cannot read" in r["98.01"].feedback
    assert r["98.02"].verdict == "error" and "write the answer itself" in r["98.02"].feedback
    assert r["98.07"].score == 0 and "not valid Python" in r["98.07"].feedback


def test_unknown_question_ids_and_magics(tmp_path):
    extra = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": '%time check("98.99", "x")\ncheck("98.99", "x")'}
    answers = {"98.06": "%%time\ndef double(xs):\n    return [2 * x for x in xs]\n!echo hi\ncheck('98.06', double)"}
    r = by_id(check_notebook(learner_copy(tmp_path, answers, edit=lambda nb: nb["cells"].append(extra)), keys=KEYS))
    assert r["98.99"].verdict == "error" and "No answer key" in r["98.99"].feedback
    assert r["98.06"].verdict == "correct"


def test_huge_outputs_and_old_nbformat(tmp_path):
    big = [{"output_type": "stream", "name": "stdout", "text": ["x" * 1_000_000 + "\n"] * 40}]  # 40 MB of output
    path = learner_copy(tmp_path, NON_CODE_RIGHT, edit=lambda nb: nb["cells"][1].update(outputs=big))
    assert sum(r.score for r in check_notebook(path, keys=KEYS)) == 6
    nb = json.loads(learner_copy(tmp_path, NON_CODE_RIGHT).read_text())
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": "old"}, "worksheets": [{"cells": [
        {"cell_type": "code", "input": c["source"], "language": "python", "outputs": []} if c["cell_type"] == "code" else
        {"cell_type": "markdown", "source": c["source"]} for c in nb["cells"]]}]}
    old = tmp_path / "old.ipynb"
    old.write_text(json.dumps(v3))
    assert sum(r.score for r in check_notebook(old, keys=KEYS)) == 6


@pytest.mark.parametrize("content,words", [
    (None, "no such file"), ("DIR", "is a folder"), (b"\x89PNG\r\n\x1a\n\x00\xff", "not a text file"),
    ('{"cells": [{"cell_type": "code", "source": "check(', "not valid notebook JSON (line 1"), ("", "not valid notebook JSON"),
    ("[1, 2, 3]", "not a Jupyter notebook"), ('{"a": 1}', "not a Jupyter notebook"),
    ('{"nbformat": 2, "worksheets": []}', "too old"), ('{"cells": "nope"}', "damaged"),
    ('{"nbformat": 4, "cells": [{"cell_type": "markdown", "source": "# Hello"}]}', "no questions found"),
])
def test_unreadable_notebooks_give_one_clear_message(tmp_path, content, words):
    path = tmp_path / "nb.ipynb"
    if content == "DIR": path.mkdir()
    elif isinstance(content, bytes): path.write_bytes(content)
    elif content is not None: path.write_text(content)
    with pytest.raises(NotebookError) as e: check_notebook(path, keys=KEYS)
    assert words in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- course check and course progress

def test_run_check_prints_a_table_records_progress_and_leaves_the_notebook_alone(tmp_path, course_home, keys_in, capsys):
    path = learner_copy(tmp_path, {**NON_CODE_RIGHT, "98.04": 'check("98.04", "vectorisation")'})
    before = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns
    assert run_check(str(path)) == 0
    out = capsys.readouterr().out
    assert "98.04  short     wrong" in out and "Vectorisation is why" in out and "Total: 4 / 7 (57%) · 5 of 7 answered · answered 1 of 1 open question (self-assessed, not in the score)" in out
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no stray files beside it
    chapter = load_progress()["chapters"]["98"]
    assert (chapter["score"], chapter["points"], chapter["answered"], chapter["open_answered"], chapter["open"]) == (4, 7, 5, 1, 1)
    assert run_check(str(path), as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["score"], data["points"], data["open_answered"]) == (4, 7, 1) and {q["qid"]: q["verdict"] for q in data["questions"]}["98.04"] == "wrong"


@pytest.mark.parametrize("make,words", [(lambda p: None, "no such file"), (lambda p: p.write_text("hello"), "not valid notebook JSON"),
                                        (lambda p: p.write_text('{"cells": []}'), "no questions found")])
def test_run_check_exits_2_with_one_line(tmp_path, course_home, capsys, make, words):
    path = tmp_path / "x.ipynb"
    make(path)
    assert run_check(str(path)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and words in err and err.startswith("course check: ")
    assert not (course_home / "progress.json").exists()


def test_run_progress_table_and_chart(tmp_path, course_home, keys_in, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path / "ws"))
    assert run_progress() is None  # nothing for Jupyter to print after the output
    assert "never" in capsys.readouterr().out
    run_check(str(learner_copy(tmp_path, NON_CODE_RIGHT)))
    capsys.readouterr()
    assert run_progress() is None
    out = capsys.readouterr().out
    assert "98       5/7 (71%)  5/7" in out and "A fixture chapter" in out
    png, beside = course_home / "progress.png", tmp_path / "ws" / "progress.png"
    assert f"Chart saved to {png}" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert f"and to {beside}, beside your notebooks" in out and beside.read_bytes() == png.read_bytes()


def test_check_all_puts_the_questions_not_answered_yet_on_one_line(monkeypatch, capsys):
    from course.quiz.display import Report
    monkeypatch.setattr(quiz, "_SESSION_KEYS", dict(KEYS))
    monkeypatch.setattr(quiz, "_SESSION_ANSWERS", {})
    ns = {"check": quiz.check}
    run_cell('check("98.04", "broadcast")', ns)
    capsys.readouterr()
    quiz.check_all()
    out = capsys.readouterr().out
    assert "98.04  short  correct" in out and "Write your answer" not in out
    assert "7 not answered yet: 98.01, 98.02, 98.03, 98.05, 98.06, 98.07, 98.08\n" in out
    assert out.count("98.03") == 1 and out.rstrip().endswith("of 7 answered · answered 0 of 1 open question (self-assessed, not in the score)")
    page = Report(quiz.check_all(show=False))._repr_html_()
    assert page.count("<tr>") == 2 and "7 not answered yet: 98.01, 98.02, 98.03, 98.05, 98.06, 98.07, 98.08</p>" in page
    monkeypatch.setattr(quiz, "_SESSION_ANSWERS", {})  # nothing answered: the line alone, no empty table
    quiz.check_all()
    out = capsys.readouterr().out
    assert out.startswith("8 not answered yet: 98.01, ") and "verdict" not in out


def test_course_check_keeps_a_row_for_what_needs_saying(tmp_path, keys_in, capsys):
    "A question not answered because its cell was turned into markdown keeps its row: the feedback says how to fix it."
    def retype(nb):
        cell = next(c for c in nb["cells"] if is_slot(c, "98.01"))
        cell["cell_type"] = "markdown"; cell.pop("outputs"); cell.pop("execution_count")
    from course.quiz.display import results_table
    table = results_table(check_notebook(learner_copy(tmp_path, {"98.04": RIGHT["98.04"]}, edit=retype), keys=KEYS))
    assert "98.01  choice  not answered" in table and "turn it back into" in table
    assert "6 not answered yet: 98.02, 98.03, 98.05, 98.06, 98.07, 98.08" in table


def numbered_copy(tmp_path, chapter: str) -> Path:
    "The fixture source notebook (with its answer cells) renumbered as chapter `chapter`."
    path = tmp_path / f"{chapter}_copy.ipynb"
    path.write_text(FIXTURE.read_text().replace("98.0", f"{chapter}.0"))
    return path


def test_two_checks_at_once_keep_the_progress_file_whole(tmp_path, course_home):
    paths = [numbered_copy(tmp_path, ch) for ch in ("91", "92", "93", "94")]
    keys = tmp_path / "keys"
    write_keys(tmp_path, keys)  # the package ships these chapters' keys: only shipped questions are recorded
    env = {**os.environ, "COURSE_HOME": str(course_home)}
    cmd = (f"import sys, pathlib, course.quiz.keys as q; q.keys_dir = lambda: pathlib.Path({str(keys)!r}); "
           "from course.tools.progress import run_check; sys.exit(run_check(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", cmd, str(p)], env=env, stdout=subprocess.DEVNULL) for p in paths * 2]
    assert [p.wait(timeout=60) for p in procs] == [0] * 8
    assert sorted(load_progress(course_home / "progress.json")["chapters"]) == ["91", "92", "93", "94"]
    assert not list(course_home.glob("*.tmp")) and not list(course_home.glob(".progress*"))


def thirty_questions(tmp_path) -> Path:
    "A source notebook with 30 questions, none of them code, all answered (keys from its own answer cells)."
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# Thirty questions\n\n## Section one"}]
    code = lambda s: {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
    kinds = [("choice", 'correct="b"', '"b"'), ("number", "value=0.95, tol=0.01", '"95%"'), ("short", 'accept=["broadcasting"]', '"Broadcasting"'),
             ("concepts", 'model="The model memorises the training set.", ideas=[{"name": "memorising", "any": ["memori[sz]"], "negation": True}], '
                          'samples=[("It memorises the data.", 1.0), ("It does not memorise.", 0.0), ("memorise, train", 0.0)]',
              '"It can memorise the training images."'),
             ("open", 'model="Anything thoughtful."', '"I would try a smaller learning rate."')]
    for i in range(1, 31):
        kind, fields, answer = kinds[i % len(kinds)]
        qid = f"96.{i:02d}"
        cells += [{"cell_type": "markdown", "metadata": {}, "source": f"**{qid}** · {kind} · [Section one](#Section-one)\n\nQuestion {i}?\n\na) x\nb) y"},
                  code(f'check("{qid}", {answer})'), code(f'#| answer {qid}\nkey(kind="{kind}", section="Section one", {fields})')]
    path = tmp_path / "96_thirty.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1))
    return path


def test_thirty_question_notebook_checks_from_the_shell(tmp_path, course_home):
    source = thirty_questions(tmp_path)
    keys = tmp_path / "keys"
    write_keys(tmp_path, keys)
    learner = tmp_path / "learner" / "96_mine.ipynb"  # a learner's copy: no answer cells, keys from the package
    learner.parent.mkdir()
    nb = json.loads(source.read_text())
    nb["cells"] = [c for c in nb["cells"] if not c["source"].startswith("#| answer")]
    learner.write_text(json.dumps(nb))
    cmd = (f"import sys, pathlib, course.quiz.keys as q; q.keys_dir = lambda: pathlib.Path({str(keys)!r}); "
           "from course.tools.progress import run_check; sys.exit(run_check(sys.argv[1]))")
    env = {**os.environ, "COURSE_HOME": str(course_home)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", cmd, str(learner)], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    print(f"course check of a 30-question notebook (no code questions), whole process: {elapsed:.2f} s")
    assert out.returncode == 0 and "Total: 24 / 24 (100%) · 24 of 24 answered · answered 6 of 6 open questions" in out.stdout, out.stdout + out.stderr


def test_importing_the_checker_stays_light():
    code = "import sys, course.quiz; bad = {'torch', 'IPython', 'nbdev', 'fastcore', 'matplotlib'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- every chapter's questionnaire

CHAPTERS = sorted(p for pattern in ("[0-9][0-9]_*.ipynb", "app_*.ipynb") for p in (REPO / "nbs").glob(pattern)
                  if "#| answer" in p.read_text(encoding="utf-8"))


# the model answers, blank slots and the lint of every chapter are in tests/test_questionnaires.py, case by case


@pytest.mark.skipif(not CHAPTERS, reason="no chapter has a questionnaire yet")
@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapter_questionnaire_size(nb):
    "At least 20 questions per chapter (chapter 20 and the appendices excepted), at least half of them objective."
    if nb.name.startswith(("20_", "app_")): pytest.skip("chapter 20 and the appendices may have fewer questions")
    assert [p for p in lint_questionnaire(nb, counts=True) if p.startswith("only")] == []


@pytest.mark.skipif(not CHAPTERS, reason="no chapter has a questionnaire yet")
@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_stripped_chapter_scores_zero(nb):
    "The stripped notebook a learner starts from scores zero on every question (keys as the package ships them)."
    stripped = REPO / "stripped" / nb.name
    if not stripped.exists(): pytest.skip(f"stripped/{nb.name} is not built yet")
    results = check_notebook(stripped, keys=notebook_questions(nb)["keys"])
    assert results and all(r.score == 0 for r in results), [r for r in results if r.score]


# ---------------------------------------------------------------- issue 14: answers that must not score

def test_rubric_ideas_are_statements_not_words():
    k = {"model": "It costs more memory, so the batch is smaller.", "question": "What does a larger model cost?",
         "ideas": [{"name": "costs more", "any": [r"cost\w* more", r"more expensive"]}, {"name": "smaller batch", "any": [r"smaller batch|batch\w* (is |gets )?smaller"]}]}
    assert qgrading.grade_concepts(k, "There is no way it costs more, and the batch gets smaller.")[0] == 0.5  # negation-aware by default
    assert qgrading.grade_concepts(k, "It costs more memory, so the batch is smaller.")[0] == 1.0
    # a list of phrases is a list, however long its items
    assert qgrading.grade_concepts(k, "costs more memory per image, smaller batch on the same card")[0] == 0.0
    assert qgrading.lone_word("cost") and not qgrading.lone_word("costs more")


def test_pasted_question_never_scores():
    k = {"id": "97.01", "kind": "number", "value": 3, "tol": 0, "question": "What is the rank of the tensor that holds all the training 3s stacked together?"}
    assert qgrading.GRADERS["number"](k, k["question"])[0] == 1  # the grader alone would be fooled
    r = grade(k, k["question"])
    assert r.score == 0 and "question's own text" in r.feedback and grade(k, "3").score == 1


def test_name_error_says_what_to_import():
    words = qgrading._error_words({"type": "NameError", "message": "name 'F' is not defined", "line": 2}, "Your cell")
    assert "`F`" in words and "import torch.nn.functional as F" in words and "answer cell" in words


def test_code_setup_has_the_chapters_imports(tmp_path):
    from course.quiz.keys import chapter_imports
    cells = [{"cell_type": "code", "source": "import re\nfrom course.quiz import check, key\n%matplotlib inline\nx = 1"},
             {"cell_type": "code", "source": "#| answer 97.01\nkey(kind='open', section='S', model='m')\nimport os"},
             {"cell_type": "code", "source": "from pathlib import Path\nimport re"}]
    assert chapter_imports(cells) == ["import re", "from pathlib import Path"]
    k = validate_key("97.02", dict(kind="code", section="S", name="word", solution="def word(s):\n    return re.findall(r'\\w+', s)[0]",
                                   tests=[("a word", "assert word('ab cd') == 'ab'")]))
    k = {**k, "id": "97.02", "imports": ["import re", "import not_a_module_anywhere"]}
    assert grade(k, "def word(s):\n    return re.findall(r'\\w+', s)[0]\n").score == 1  # `re` comes from the chapter's imports
    r = grade(k, "def word(s):\n    return regex.findall(r'\\w+', s)[0]\n")
    assert r.score == 0 and "`regex`" in r.feedback and "import" in r.feedback


def test_open_questions_are_apart_from_the_score():
    from course.quiz.display import summary_line
    rs = [qgrading.Result("97.01", "choice", "correct", 1, 1), qgrading.Result("97.02", "open", "answered", 1, 1),
          qgrading.Result("97.03", "open", "not answered", 0, 1)]
    assert summary_line(rs) == "Total: 1 / 1 (100%) · 1 of 1 answered · answered 1 of 2 open questions (self-assessed, not in the score)"


def test_balance_choices_spreads_the_right_letters(tmp_path):
    from course.quiz.checker import balance_choices, blind_strategies, choice_options
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# Ch\n\n## S"},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "from course.quiz import check, check_all, hint, key"}]
    code = lambda s: {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
    for i in range(1, 9):
        qid = f"97.{i:02d}"
        cells += [{"cell_type": "markdown", "metadata": {}, "source": f"**{qid}** · choice · [S](#S)\n\nPick {i}.\n\na) right {i}\nb) wrong one\nc) wrong two\nd) wrong 3"},
                  code(f'check("{qid}", "a")'), code(f'#| answer {qid}\nkey(kind="choice", section="S", correct="a", feedback={{"b": "not b", "c": "not c"}})')]
    path = tmp_path / "97_balance.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1))
    before = path.read_bytes()
    report = balance_choices(path)
    assert path.read_bytes() == before and any("->" in r for r in report)  # write=False changes nothing
    assert balance_choices(path, write=True) == report and balance_choices(path) == [r for r in report if "->" not in r and "renamed" not in r]  # deterministic, then settled
    keys = notebook_questions(path)["keys"]
    assert max(blind_strategies(keys)[f"always {o!r}"] for o in "abcd") <= 0.25
    for qid, k in keys.items():
        opts = choice_options(k["question"])
        assert opts[k["correct"]].startswith("right") and {opts[o] for o in k["feedback"]} == {"wrong one", "wrong two"}
    answered = check_notebook(path, keys=keys)
    assert all(r.verdict == "correct" for r in answered)  # the check("..", "a") answers were renamed with their options

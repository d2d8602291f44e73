"""Fault tests of the questionnaire checker (issue 13): notebooks damaged in structure, hostile and expensive answers,
forged keys, bad question ids and killed runs. Each case is one row of a table and asserts a clear message (no traceback),
that no learner file changed and that no grading process is left behind; the summary line printed at the end counts them."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import course.quiz as quiz
from course.quiz import keys as qkeys
from course.quiz import sandbox
from course.quiz.checker import check_notebook
from course.quiz.grading import grade
from course.tools.progress import load_progress, run_check

from test_checker import FIXTURE, KEYS, NON_CODE_RIGHT, PY_KEY, RIGHT, keys_in, learner_copy  # noqa: F401 (keys_in is a fixture)

MARK = "COURSE_FAULT_" + uuid.uuid4().hex  # every grading process of these tests carries it in its environment
TALLY = {"tried": 0, "clear": 0, "traceback": 0, "files changed": 0, "processes left": 0}


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    "Print how the fault cases fared, in the words of issue 13."
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter and capture:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\nchecker fault cases: " + ", ".join(f"{k} {v}" for k, v in TALLY.items()))


@pytest.fixture(autouse=True)
def marked(monkeypatch):
    monkeypatch.setenv("COURSE_TEST_MARK", MARK)
    monkeypatch.setattr(sandbox, "WALL_MIN", 15.0)  # a waiting answer is stopped after 15 s, not a minute (generous: the machine may be busy)
    monkeypatch.setattr(sandbox, "WALL_FACTOR", 8.0)


def grading_processes() -> list[int]:
    "The processes started by these tests' checks that are still alive (zombies aside)."
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid(): continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError: continue
        if MARK.encode() in env and state != "Z": out.append(int(pid))
    return out


def settle(limit: float = 15.0) -> list[int]:
    "Wait (at most `limit` seconds) for the grading processes to go; return those still there."
    end = time.monotonic() + limit
    while (left := grading_processes()) and time.monotonic() < end: time.sleep(0.1)
    for pid in left:  # never leave them to the next test
        try: os.kill(pid, signal.SIGKILL)
        except OSError: pass
    return left


def digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def tally(text: str, words: str, before: dict, after: dict, left: list):
    "Count one fault case, then assert it was handled: the expected words, no traceback, no learner file changed, no process left."
    text, words = " ".join(text.split()), " ".join(words.split())  # tables wrap and pad their columns
    TALLY["tried"] += 1
    TALLY["traceback"] += "Traceback" in text
    TALLY["clear"] += words in text and "Traceback" not in text
    TALLY["files changed"] += before != after
    TALLY["processes left"] += bool(left)
    assert words in text and "Traceback" not in text, text
    assert before == after, "a learner file changed"
    assert not left, f"grading processes left behind: {left}"


@pytest.fixture
def learner(tmp_path):
    "A folder of the learner's own files: their notebook and a note; answers try to change them."
    folder = tmp_path / "learner"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "mine.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return folder


# ---------------------------------------------------------------- notebooks damaged in structure

def nb(cells, **top) -> str: return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5, **top})
def code_cell(src): return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": src}


STRUCTURE = [  # (name, file content, words in what course check prints)
    ("cut short", nb([code_cell('check("98.04", "broadcasting")')])[:-20], "not valid notebook JSON"),
    ("empty file", "", "not valid notebook JSON"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file"),
    ("invalid utf-8 inside", b'{"cells": ["\xff\xfe"]}', "not a text file"),
    ("a JSON list", "[1, 2, 3]", "not a Jupyter notebook"),
    ("cells not a list", '{"cells": {"a": 1}}', "damaged"),
    ("cells of the wrong types", nb([1, "x", None, [], code_cell('check("98.04", "broadcasting")')]), "98.04  short     correct"),
    ("cell_type a list", nb([{"cell_type": ["code"], "source": 'check("98.04", "x")'}, code_cell('check("98.01", "b")')]), "98.01  choice    correct"),
    ("source a number", nb([{"cell_type": "code", "source": 42}, code_cell('check("98.01", "b")')]), "98.01  choice    correct"),
    ("source a list of junk", nb([{"cell_type": "code", "source": [None, 3, 'check("98.01", ', '"b")']}]), "98.01  choice    correct"),
    ("no source, no type", nb([{}, {"metadata": 3}, code_cell('check("98.01", "b")')]), "98.01  choice    correct"),
    ("metadata of the wrong type", nb([code_cell('check("98.01", "b")')]).replace('"metadata": {}, "nbformat"', '"metadata": 7, "nbformat"'), "98.01  choice    correct"),
    ("nbformat 2", '{"nbformat": 2, "worksheets": []}', "too old"),
    ("nbformat 3, worksheets not a list", '{"nbformat": 3, "worksheets": 5}', "no questions found"),
    ("nbformat 3, odd heading levels", json.dumps({"nbformat": 3, "worksheets": [{"cells": [
        {"cell_type": "heading", "level": "abc", "source": "Title"}, {"cell_type": "heading", "level": 10**9, "source": "T"},
        {"cell_type": "code", "input": 'check("98.01", "b")'}]}]}), "98.01  choice    correct"),
    ("nested 100,000 deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("a 5,000-digit number", '{"cells": [], "execution_count": ' + "9" * 5000 + "}", "not valid notebook JSON"),
    ("a cell of 1,200,000 characters", nb([code_cell('check("98.04", "' + "x" * 1_200_000 + '")')]), "too long to read"),
    ("50,000 small cells", nb([code_cell("x = 1")] * 50_000 + [code_cell('check("98.01", "b")')]), "98.01  choice    correct"),
    ("40 MB of outputs", nb([{**code_cell('check("98.01", "b")'), "outputs": [{"output_type": "stream", "name": "stdout",
                                                                             "text": ["y" * 1_000_000] * 40}]}]), "98.01  choice    correct"),
    ("the same id 2,000 times", nb([code_cell('check("98.01", "b")')] * 2000), "2000 cells answer 98.01"),
    ("no question at all", nb([{"cell_type": "markdown", "source": "# Hi"}]), "no questions found"),
    ("question ids that are not ids", nb([code_cell('check("../../etc/x.1", "b")\ncheck("' + "9" * 500 + '", 1)\ncheck("98.01", "b")')]), "is not a question id"),
]


@pytest.mark.parametrize("name,content,words", STRUCTURE, ids=[c[0] for c in STRUCTURE])
def test_damaged_notebooks(name, content, words, learner, course_home, keys_in, capsys):
    path = learner / "damaged.ipynb"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = digest(learner)
    rc = run_check(str(path))
    out, err = capsys.readouterr()
    assert rc in (0, 2) and (rc == 2) == bool(err)
    tally(out + err, words, before, digest(learner), settle())


@pytest.mark.parametrize("make,words", [(lambda p: p.mkdir(), "is a folder"), (lambda p: os.mkfifo(p), "not a file"),
                                        (lambda p: p.symlink_to(p.parent / "nowhere"), "no such file")], ids=["folder", "fifo", "dangling link"])
def test_paths_that_are_no_notebook(make, words, learner, course_home, capsys):
    path = learner / "odd.ipynb"
    make(path)
    before = sorted(p.name for p in learner.iterdir())
    assert run_check(str(path)) == 2
    out, err = capsys.readouterr()
    tally(out + err, words, before, sorted(p.name for p in learner.iterdir()), settle())


# ---------------------------------------------------------------- hostile answers to a code question

def keyfile() -> str: return str(qkeys.keys_dir() / "98.key")


HOSTILE = [  # (name, answer to 98.06 "double", expected verdict, words in the feedback); {key}, {nb}, {notes} are filled in
    ("forged events through the caller's frames", """import sys, os
def double(xs):
    f = sys._getframe(1)
    while f is not None:
        send = f.f_locals.get("send")
        if send:
            for i in range(3): send(event="case", case=i, ok=True, values=[])
            send(event="done"); os._exit(0)
        f = f.f_back
    return xs""", "wrong", "differ from the model solution's"),
    ("forged lines on every descriptor", """import os, json
def double(xs):
    for fd in range(3, 64):
        for i in range(3):
            try: os.write(fd, (json.dumps({"q": 0, "event": "case", "case": i, "ok": True, "values": []}) + "\\n").encode())
            except OSError: pass
    return xs""", "wrong", "differ from the model solution's"),
    ("the recorder replaced", """import sys
def double(xs):
    sys._getframe(1).f_globals["__course_value__"] = lambda node, value: value
    return xs""", "wrong", "differ from the model solution's"),
    ("an object equal to everything", """class Liar(list):
    def __eq__(self, other): return True
def double(xs): return Liar()""", "partly", "differ from the model solution's"),
    ("assert disabled by patching builtins", """import builtins
builtins.AssertionError = type("Nope", (Exception,), {})
def double(xs): return xs""", "partly", "cases pass"),
    ("the shipped key file read", "src = open({key}).read()\ndef double(xs): return xs", "wrong", "does not let an answer open"),
    ("the keys loaded through the package", "from course.quiz.keys import load_keys\nexec(load_keys('04')['04.05']['solution'])",
     "wrong", "does not let an answer open"),
    ("the keys folder opened for dir_fd", "import os\nfd = os.open({keydir}, os.O_RDONLY)\ndef double(xs): return xs", "wrong", "does not let an answer open"),
    ("a symlink to the key file", "import os\nos.symlink({key}, 'k')\nopen('k').read()", "wrong", "does not let an answer open"),
    ("a hard link to the key file", "import os\nos.link({key}, 'k')", "wrong", "change files outside its own folder"),
    ("a source notebook read", "open({source_nb}).read()", "wrong", "does not let an answer open"),
    ("another process's memory", "import os\nopen(f'/proc/{os.getppid()}/environ').read()", "wrong", "does not let an answer open"),
    ("the learner's notebook overwritten", "open({nb}, 'w').write('{}')", "wrong", "does not let an answer open"),
    ("the learner's notes overwritten", "open({notes}, 'w').write('gone')", "wrong", "write outside its own folder"),
    ("the learner's notes deleted", "import os\nos.remove({notes})", "wrong", "change files outside its own folder"),
    ("the learner's folder removed", "import shutil\nshutil.rmtree({folder})", "wrong", "change files outside its own folder"),
    ("the learner's notes renamed", "import os\nos.rename({notes}, 'stolen.txt')", "wrong", "change files outside its own folder"),
    ("a file truncated via dir_fd", "import os\nfd = os.open({folder}, os.O_RDONLY)\nos.remove('notes.txt', dir_fd=fd)", "wrong", "change files outside"),
    ("a program started", "import subprocess\nsubprocess.run(['cat', {key}])", "wrong", "start other programs"),
    ("os.system", "import os\nos.system('touch /tmp/pwned')", "wrong", "start other programs"),
    ("libc system() through ctypes", "import ctypes\nctypes.CDLL(None).system(b'true')", "wrong", "through ctypes"),
    ("the grading process killed", "import os\nos.kill(os.getppid(), 9)", "wrong", "signal a process it did not start"),
    ("the grading process's group killed", "import os\nos.killpg(os.getpgid(os.getppid()), 9)", "wrong", "signal a process it did not start"),
    ("its CPU limit raised", "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))", "wrong", "change its limits"),
    ("children escaping with setsid", """import os, time
def double(xs):
    for _ in range(4):
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0: time.sleep(1000)
            time.sleep(1000)
    return [2 * x for x in xs]""", "correct", ""),
    ("a fork bomb", """import os, time
def double(xs):
    while True:
        if os.fork() == 0: time.sleep(1000)""", "wrong", "start more than 64 processes"),
    ("an endless loop", "def double(xs):\n    while True: pass", "wrong", "ran longer than 1 s of CPU time"),
    ("an endless loop ignoring SIGXCPU", "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass", "wrong", "ran longer than 1 s of CPU time"),
    ("sleeping", "import time\ndef double(xs):\n    time.sleep(1000)", "wrong", "was still running after 15 s"),
    ("stopped by SIGSTOP", "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", "wrong", "was still running after 15 s"),
    ("a huge int computed", "def double(xs):\n    return (((9**99)**99)**99)**99", "wrong", "ran longer than 1 s of CPU time"),
    ("a huge int returned", "def double(xs):\n    return 7 ** 100_000", "wrong", "Case 'an empty list' fails"),
    ("ten million items returned", "def double(xs):\n    return [0] * 10_000_000", "wrong", "Case 'an empty list' fails"),
    ("megabytes printed", "def double(xs):\n    print('x' * 5_000_000)", "wrong", "printed too much output"),
    ("gigabytes asked for", "x = bytearray(6 * 1024**3)", "wrong", "more memory than allowed"),
    ("every descriptor closed", "import os\nos.closerange(3, 1000)\ndef double(xs): return [2 * x for x in xs]", "wrong", "ended the grading process early"),
    ("an exception whose str() fails", "class E(Exception):\n    def __str__(self): raise RuntimeError\ndef double(xs): raise E()", "wrong", "raised E"),
    ("json.dumps poisoned", "import json\njson.dumps = None\ndef double(xs): return [2 * x for x in xs]", "correct", ""),
    ("a crash in native code", "import ctypes\nctypes.string_at(0)", "wrong", "crashed (signal SIGSEGV) before the tests, twice in a row"),
    ("killing itself", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "wrong", "killed (signal SIGKILL)"),
]


@pytest.mark.parametrize("name,src,verdict,words", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_code_answers(name, src, verdict, words, learner, keys_in):
    paths = {"key": keyfile(), "keydir": str(qkeys.keys_dir()), "nb": str(learner / "mine.ipynb"), "notes": str(learner / "notes.txt"),
             "folder": str(learner), "source_nb": str(FIXTURE)}
    before = digest(learner)
    for name, path in paths.items(): src = src.replace("{" + name + "}", repr(path))
    r = grade({**PY_KEY, "id": "98.06"}, src, timeout=1)
    assert r.verdict == verdict, r
    tally(str(r), words, before, digest(learner), settle())


def test_torch_allclose_patched(learner):
    "An answer to the MSE question that replaces torch.allclose still fails the case it gets wrong."
    src = "import torch\ntorch.allclose = lambda *a, **k: True\ndef mse(p, t):\n    return (p - t).abs().mean()"
    before = digest(learner)
    r = grade(KEYS["98.05"], src, timeout=20)
    assert r.verdict == "partly" and "'random tensors' fails" in r.feedback, r
    tally(r.feedback, "differ from the model solution's", before, digest(learner), settle())
    assert grade(KEYS["98.05"], RIGHT["98.05"], timeout=20).verdict == "correct"


def test_the_answer_process_never_holds_the_solution(monkeypatch):
    "The job the answer's grading process gets holds the answer and the tests, never the model solution."
    jobs = []
    real = sandbox._start_grader
    monkeypatch.setattr(sandbox, "_start_grader", lambda questions, *a: (jobs.append(questions), real(questions, *a))[1])
    assert grade(PY_KEY, "def double(xs):\n    return [x * 2 for x in xs]").verdict == "correct"
    answer_jobs = [q for q in jobs if "x * 2" in json.dumps(q)]
    assert answer_jobs and all(PY_KEY["solution"] not in json.dumps(q) for q in answer_jobs)


# ---------------------------------------------------------------- transient failures: retried once, then said as they are

def test_a_grading_process_that_fails_to_start_once_is_retried(monkeypatch):
    calls = []
    real = sandbox._start_grader
    def flaky(*args):
        calls.append(1)
        if len(calls) == 1: raise OSError(11, "Resource temporarily unavailable")
        return real(*args)
    monkeypatch.setattr(sandbox, "_start_grader", flaky)
    monkeypatch.setattr(sandbox, "GRADERS_AT_ONCE", 1)
    sandbox._MODEL_RUNS.clear()
    assert grade(PY_KEY, "def double(xs):\n    return [x + x for x in xs]").verdict == "correct"
    monkeypatch.setattr(sandbox, "_start_grader", lambda *a: (_ for _ in ()).throw(OSError(12, "Cannot allocate memory")))
    r = grade(PY_KEY, "def double(xs):\n    return [x + x + 0 for x in xs]")
    assert r.verdict == "error" and "could not start: Cannot allocate memory, twice in a row" in r.feedback and "not your answer's fault" in r.feedback
    assert "your code crashed" not in r.feedback.lower()


# ---------------------------------------------------------------- expensive answers

EXPENSIVE = [  # (name, answer cell of a learner's notebook, question, words)
    ("a power tower", 'check("98.03", (((9**99)**99)**99)**99)', "98.03", "more than 1,000 digits"),
    ("a long sum", 'check("98.03", ' + "+".join(["1"] * 20_000) + ")", "98.03", "write the answer itself"),
    ("a 5,000-digit literal", 'check("98.03", ' + "9" * 5000 + ")", "98.03", "not valid Python"),
    ("a 900,000-character short answer", 'check("98.04", "' + "b" * 900_000 + '")', "98.04", "reads a short answer only up to 1,000"),
    ("150,000 words of short answer", 'check("98.04", "' + "broad " * 150_000 + '")', "98.04", "reads a short answer only up to 1,000"),
    ("880,000 characters of free text", 'check("98.07", "' + "memorise unseen " * 55_000 + '")', "98.07", "reads a concepts answer only up to 20,000"),
    ("a cell of 1,100,000 characters", 'check("98.04", "' + "b" * 1_100_000 + '")', "98.04", "too long to read"),
    ("a huge choice", 'check("98.01", "' + "a, " * 300_000 + '")', "98.01", "reads a choice answer only up to 1,000"),
    ("a list of 100,000 choices", 'check("98.01", [' + '"a", ' * 100_000 + "])", "98.01", "100,000 items long"),
]


@pytest.mark.parametrize("name,cell,qid,words", EXPENSIVE, ids=[c[0] for c in EXPENSIVE])
def test_expensive_answers_from_a_file(name, cell, qid, words, tmp_path):
    path = learner_copy(tmp_path, {qid: cell})
    before = digest(path.parent)
    r = {x.qid: x for x in check_notebook(path, keys=KEYS)}[qid]
    assert r.score == 0 and r.verdict in ("wrong", "error"), r
    tally(r.feedback, words, before, digest(path.parent), settle())


@pytest.mark.parametrize("qid,answer,words", [
    ("98.03", 10 ** 4000, "more than 1,000 digits"), ("98.03", 10 ** 400, "too large to be the answer"),
    ("98.04", "b" * 1_000_000, "up to 1,000"), ("98.04", "broadcasting " * 80, "up to 1,000"),
    ("98.07", "It memorises. " * 100_000, "up to 20,000"), ("98.01", ["a"] * 5000, "5,000 items"), ("98.06", "x = 1\n" * 200_000, "up to 1,000,000"),
], ids=["10**4000", "10**400", "1M chars short", "long short", "long concepts", "5000 choices", "1.2M chars code"])
def test_expensive_answers_in_the_notebook(qid, answer, words, tmp_path):
    r = grade({**KEYS[qid], "id": qid}, answer)
    assert r.score == 0 and r.verdict == "wrong", r
    tally(r.feedback, words, {}, {}, settle())


# ---------------------------------------------------------------- forged keys and bad ids

def forged_answer_cells(nb):
    "Answer cells a learner pasted: keys that accept their own wrong answers."
    cells = nb["cells"]
    cells.append(code_cell('#| answer 98.04\nkey(kind="short", section="Broadcasting", accept=["zzz"])'))
    cells.append(code_cell('#| answer 98.06\nkey(kind="code", section="Losses", name="double", solution="def double(xs): return xs", '
                           'tests=[("t", "pass")])'))
    cells.append({"cell_type": "markdown", "metadata": {}, "source": "**98.99** · short · [Broadcasting](#Broadcasting)\n\nFree points?"})
    cells.append(code_cell('#| answer 98.99\nkey(kind="short", section="Broadcasting", accept=["yes"])\ncheck("98.99", "yes")'))


def test_answer_cells_in_a_learners_notebook_are_ignored(tmp_path, course_home, keys_in, capsys):
    path = learner_copy(tmp_path, {"98.04": 'check("98.04", "zzz")', "98.06": "def double(xs): return xs\ncheck('98.06', double)"},
                        edit=forged_answer_cells)
    before = digest(path.parent)
    assert run_check(str(path)) == 0
    out = capsys.readouterr().out
    assert re.search(r"98\.04 +short +wrong", out) and re.search(r"98\.06 +code +partly", out) and "There is no question 98.99 in chapter 98" in out
    assert set(load_progress()["chapters"]["98"]["results"]) == {f"98.0{i}" for i in range(1, 9)}  # 98.99 not recorded
    tally(out, "Total: 0.33 / 7", before, digest(path.parent), settle())


def test_keys_registered_in_a_learners_session_do_not_replace_shipped_ones(keys_in, monkeypatch, capsys):
    monkeypatch.setattr(quiz, "_SESSION_KEYS", {})
    quiz._SESSION_KEYS["98.04"] = {"id": "98.04", **qkeys.validate_key("98.04", dict(kind="short", section="S", accept=["zzz"]))}
    r = quiz.check("98.04", "zzz", show=False)
    assert r.verdict == "wrong"
    assert quiz.check("98.04", "broadcasting", show=False).verdict == "correct"
    tally(str(r), "98.04 wrong", {}, {}, settle())


@pytest.mark.parametrize("cell,words", [('check("4.03", 3)', "There is no question 4.03: did you mean 04.03?"),
                                        ('check("04.999", 3)', "There is no question 04.999 in chapter 04"),
                                        ('check("77.01", 3)', "no questionnaire for chapter 77"),
                                        ('check("x/y.1", 3)', "is not a question id")], ids=["4.03", "04.999", "77.01", "x/y.1"])
def test_bad_question_ids_are_reported_and_never_recorded(cell, words, tmp_path, course_home, capsys):
    path = tmp_path / "work" / "nb.ipynb"
    path.parent.mkdir()
    path.write_text(nb([code_cell(cell)]))
    before = digest(path.parent)
    assert run_check(str(path)) == 0
    out = capsys.readouterr().out
    recorded = load_progress()["chapters"]
    assert set(recorded) <= {"04"} and not any(q in rec["results"] for rec in recorded.values() for q in ("4.03", "04.999", "77.01", "x/y.1"))
    assert quiz.check(cell.split('"')[1], 3, show=False).verdict == "error"
    tally(out, words, before, digest(path.parent), settle())


# ---------------------------------------------------------------- killed runs

KILLED = [  # (name, answer to 98.06 that keeps the grading busy when `course check` is killed)
    ("waiting", "import time\ndef double(xs):\n    time.sleep(1000)\ncheck('98.06', double)"),
    ("looping", "def double(xs):\n    while True: pass\ncheck('98.06', double)"),
    ("children in their own sessions", "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid(); time.sleep(1000)\n"
                                       "time.sleep(1000)\ndef double(xs): return xs\ncheck('98.06', double)"),
]


@pytest.mark.parametrize("name,answer", KILLED, ids=[k[0] for k in KILLED])
def test_kill_9_of_course_check_leaves_nothing_behind(name, answer, tmp_path, course_home, keys_in):
    path = learner_copy(tmp_path, {**NON_CODE_RIGHT, "98.06": answer})
    before = digest(path.parent)
    cmd = (f"import sys, pathlib, course.quiz.keys as q; q.keys_dir = lambda: pathlib.Path({str(keys_in)!r}); "
           "from course.tools.progress import run_check; sys.exit(run_check(sys.argv[1]))")
    check = subprocess.Popen([sys.executable, "-c", cmd, str(path)], env={**os.environ, "COURSE_HOME": str(course_home)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    end = time.monotonic() + 120  # wait until the answer's grading child runs (the check itself and two grading processes, at least)
    while len(grading_processes()) < 3 and check.poll() is None and time.monotonic() < end: time.sleep(0.1)
    time.sleep(1)
    assert check.poll() is None, "the check ended before it could be killed"
    os.kill(check.pid, signal.SIGKILL)
    check.wait()
    assert check.stderr.read() == b""
    assert not (course_home / "progress.json").exists() or load_progress(course_home / "progress.json")
    tally("killed", "killed", before, digest(path.parent), settle())

"""The build: full/ and stripped/ rules, determinism, and --check, on the fixture chapters."""
import hashlib
import json
import sys
from pathlib import Path

from course.tools.build import NOTE_ID, build, make_full, make_stripped, read_notebook


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("course", "full", "stripped") for p in sorted((root / folder).rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_full_keeps_prose_and_drops_plumbing(mini_repo):
    build(mini_repo, log=lambda *a: None)
    full = json.loads((mini_repo / "full" / "01_demo.ipynb").read_text())
    text = "".join("".join(c["source"]) for c in full["cells"])
    assert "This prose is for reading only" in text
    assert "#|" not in text, "directive lines must be removed"
    assert "assert add(1, 2) == 3" not in text, "hidden cells must be dropped"
    assert "key(kind=" not in text, "answer keys must never reach full/"
    assert "nbdev_export" not in text, "export plumbing must be dropped"
    assert full["metadata"]["kernelspec"] == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    assert all(c["metadata"] == {} for c in full["cells"])


def test_metadata_is_what_jupyterlab_writes(mini_repo):
    "JupyterLab replaces a notebook's kernelspec and language_info by its kernel's when they differ, and then asks to save it."
    import sys
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelspec import get_kernel_dict
    build(mini_repo, log=lambda *a: None)
    spec = get_kernel_dict()
    want = {"kernelspec": {"name": "python3", "display_name": spec["display_name"], "language": spec["language"]},
            "language_info": IPythonKernel.language_info}
    assert want["language_info"]["version"] == sys.version.split()[0]
    for folder in ("full", "stripped"):
        for path in sorted((mini_repo / folder).glob("*.ipynb")):
            assert json.loads(path.read_text())["metadata"] == want, path


def test_check_ignores_the_python_version_and_the_build_keeps_it(mini_repo):
    "The version names the machine, not nbs/: --check passes on any Python, and a rebuild does not rewrite every file for it."
    build(mini_repo, log=lambda *a: None)
    paths = [mini_repo / f / "01_demo.ipynb" for f in ("full", "stripped")]
    for p in paths:
        p.write_text(p.read_text().replace(f'"version": "{sys.version.split()[0]}"', '"version": "3.10.1"'))
    before = [p.read_bytes() for p in paths]
    assert all(b'"version": "3.10.1"' in b for b in before)
    assert build(mini_repo, check=True) == []
    build(mini_repo, log=lambda *a: None)
    assert [p.read_bytes() for p in paths] == before
    for p in paths:  # a notebook written before the build wrote language_info is stale
        nb = json.loads(p.read_text()); del nb["metadata"]["language_info"]; p.write_text(json.dumps(nb))
    assert sorted(build(mini_repo, check=True)) == ["full/01_demo.ipynb", "stripped/01_demo.ipynb"]


def test_stripped_keeps_headings_code_and_questions(mini_repo):
    build(mini_repo, log=lambda *a: None)
    nb = json.loads((mini_repo / "stripped" / "01_demo.ipynb").read_text())
    md = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert md[0] == "# A demo chapter\n\n## Adding numbers"
    assert "### Multiplying" in md and not any("a fenced block" in m for m in md)
    assert not any("prose" in m.lower() for m in md if not m.startswith("**"))
    assert any(m.startswith("**01.01**") and "add(2, 3)" in m for m in md), "questions stay"
    assert 'check("01.01", None)' in code and 'check("01.02", "")' in code, "answer slots stay"
    assert not any("key(kind=" in c for c in code)
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"] if c["cell_type"] == "code")
    assert "## Further research" in md and "Write `add3`" not in "".join(md)


def test_build_is_deterministic(mini_repo):
    build(mini_repo, log=lambda *a: None)
    first = _digest(mini_repo)
    build(mini_repo, log=lambda *a: None)
    assert _digest(mini_repo) == first
    assert build(mini_repo, check=True) == []


def test_check_names_stale_files(mini_repo):
    build(mini_repo, log=lambda *a: None)
    src = mini_repo / "nbs" / "01_demo.ipynb"
    nb = json.loads(src.read_text())
    nb["cells"][2]["source"] = ["# A demo chapter, edited\n"]
    src.write_text(json.dumps(nb))
    stale = build(mini_repo, check=True)
    assert "full/01_demo.ipynb" in stale and "stripped/01_demo.ipynb" in stale


def test_check_finds_unexported_code_and_stale_keys(mini_repo):
    build(mini_repo, log=lambda *a: None)
    src = mini_repo / "nbs" / "01_demo.ipynb"
    text = src.read_text().replace("return a + b", "return b + a").replace("value=5, tol=0", "value=5, tol=1")
    src.write_text(text)
    stale = build(mini_repo, check=True)
    assert "course/demo.py" in stale
    assert any(s.startswith("course/keys/") for s in stale), stale


def test_outputs_survive_rebuild_and_note_marks_offline_runs(mini_repo):
    nb = read_notebook(mini_repo / "nbs" / "01_demo.ipynb")
    executed = json.loads(json.dumps(nb))
    executed["metadata"]["course"] = {"offline": True}
    for c in executed["cells"]:
        if c["cell_type"] == "code" and c["source"] == "add(2, 3)":
            c["outputs"] = [{"output_type": "execute_result", "data": {"text/plain": "5"}, "metadata": {}, "execution_count": 3}]
    full = make_full(nb, executed=executed)
    assert full["cells"][0]["id"] == NOTE_ID and "generates" in full["cells"][0]["source"]  # the demo downloads nothing
    fetch = {"cell_type": "code", "id": "zz", "metadata": {}, "source": "path = untar_data(URLs.PETS)", "outputs": [], "execution_count": None}
    uses, ran = json.loads(json.dumps(nb)), json.loads(json.dumps(executed))
    uses["cells"].append(fetch); ran["cells"].append(fetch)
    assert "offline twins" in make_full(uses, executed=ran)["cells"][0]["source"]
    rebuilt = make_full(nb, previous=json.loads(json.dumps(full)))
    assert rebuilt == full


def test_stripped_of_a_prose_only_appendix(mini_repo):
    nb = read_notebook(mini_repo / "nbs" / "app_a_extra.ipynb")
    cells = make_stripped(nb)["cells"]
    assert [c["source"] for c in cells] == ["# An appendix\n\n## A section", 'print("hello from the appendix")']


def test_removed_chapter_is_removed_from_outputs(mini_repo):
    build(mini_repo, log=lambda *a: None)
    (mini_repo / "nbs" / "app_a_extra.ipynb").unlink()
    assert "full/app_a_extra.ipynb (no such chapter in nbs/)" in build(mini_repo, check=True)
    build(mini_repo, log=lambda *a: None)
    assert not (mini_repo / "full" / "app_a_extra.ipynb").exists()


def test_execute_runs_a_copy_and_reports_the_failing_cell(mini_repo, monkeypatch):
    import pytest
    from course.tools.build import BuildError, execute_notebook
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    src = mini_repo / "nbs" / "app_a_extra.ipynb"
    before = src.read_bytes()
    nb = execute_notebook(src, timeout=120)
    assert src.read_bytes() == before, "nbs/ is never modified by execution"
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert any("hello from the appendix" in "".join(o.get("text", "")) for o in outputs)
    assert nb["metadata"]["course"] == {"offline": True}
    bad = json.loads(before)
    bad["cells"].append({"cell_type": "code", "id": "boom", "metadata": {}, "execution_count": None, "outputs": [],
                         "source": ["1 / 0  # a failing cell"]})
    (mini_repo / "nbs" / "app_b_bad.ipynb").write_text(json.dumps(bad))
    with pytest.raises(BuildError, match=r"app_b_bad.ipynb: cell 2 \(`1 / 0  # a failing cell`\) failed: ZeroDivisionError"):
        execute_notebook(mini_repo / "nbs" / "app_b_bad.ipynb", timeout=120)
    slow = json.loads(before)
    slow["cells"][1]["source"] = ["import time; time.sleep(30)"]
    (mini_repo / "nbs" / "app_b_bad.ipynb").write_text(json.dumps(slow))
    with pytest.raises(BuildError, match="still running after 3 s"):
        execute_notebook(mini_repo / "nbs" / "app_b_bad.ipynb", timeout=3)


def test_shipped_stripped_notebooks_keep_no_prose_outside_the_questionnaire():
    "A stripped notebook shows headings only, until its questionnaire: no recap, sidebar or explanation leaks in."
    from course.tools.build import _heading_level
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "stripped").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "markdown": continue
            text = "".join(cell["source"])
            head, sep, _ = text.partition("## Questionnaire")
            prose = [line for line in head.splitlines() if line.strip() and not _heading_level(line)]
            assert not prose, f"{path.name}: a markdown cell keeps prose: {prose[0][:80]!r}"
            if sep: break  # the questionnaire keeps its questions

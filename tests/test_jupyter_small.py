"""What a learner sees in Jupyter, checked in a real kernel: the metadata the build writes is the kernel's own (so
JupyterLab opens a notebook unmodified), `run_progress()` shows its chart inline, saves it in the workspace and
prints no stray value, and `check_all()` shows the questions not answered yet on one line."""
import nbformat
from nbclient import NotebookClient

from course.quiz.keys import load_keys
from course.tools.build import notebook_metadata


def test_a_learners_notebook_in_a_kernel(tmp_path, course_home, monkeypatch):
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path / "ws"))  # the kernel inherits the environment
    qids = sorted(load_keys("04"))
    nb = nbformat.v4.new_notebook(metadata=notebook_metadata())
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (
        "from course.tools.progress import run_progress\nrun_progress()",
        f"from course.quiz import check, check_all\ncheck({qids[0]!r}, 'no idea')",
        "check_all()")]
    want = nbformat.from_dict(notebook_metadata())
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    # the kernel reports the language_info the build writes: JupyterLab finds nothing to change
    assert nb.metadata.language_info == want.language_info

    progress, _, table = (c.outputs for c in nb.cells)
    assert not [o for o in progress if o.output_type in ("execute_result", "error")], progress  # no stray `0`
    text = "".join(o.get("text", "") for o in progress if o.output_type == "stream")
    assert f"and to {tmp_path / 'ws' / 'progress.png'}, beside your notebooks" in text
    assert [o for o in progress if o.output_type == "display_data" and "image/png" in o.data], "the chart is shown inline"
    assert (tmp_path / "ws" / "progress.png").read_bytes()[:4] == b"\x89PNG"

    html = table[0].data["text/html"]
    rest = ", ".join(qids[1:])
    assert html.count("<tr>") == 2 and f"{len(qids) - 1} not answered yet: {rest}</p>" in html
    assert "Write your answer" not in html

"""course.blog (appendix A): a notebook with a matplotlib figure becomes a Markdown post with front matter and its image
as a file; bad input gets a clear message; a Quarto blog renders the post where Quarto is installed."""
import base64
import datetime as dt
import io
import shutil
import subprocess

import nbformat
import pytest
import yaml

from course.blog import front_matter, notebook_to_post

QUARTO = shutil.which("quarto")


def figure_png() -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [1, 0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A: small \"test\" post\n\n> Checks the converter.\n\nSome *prose*."),
        nbformat.v4.new_code_cell("#| hide\nhidden_setup = 1"),
        nbformat.v4.new_code_cell("#| echo: false\nplt.plot([0, 1, 2], [1, 0, 1])",
                                  outputs=[nbformat.v4.new_output("display_data", data={"image/png": figure_png(), "text/plain": "<Figure>"})]),
        nbformat.v4.new_code_cell("print(2 + 2)", outputs=[nbformat.v4.new_output("stream", name="stdout", text="4\n")]),
    ])
    path = tmp_path / "small.ipynb"
    nbformat.write(nb, path)
    return path


def read_post(post):
    text = post.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    _, head, body = text.split("---\n", 2)
    return yaml.safe_load(head), body


def test_post_has_front_matter_body_and_image(notebook, tmp_path):
    post = notebook_to_post(notebook, tmp_path / "posts", date=dt.date(2024, 3, 9), tags=["test", "plots"])
    assert post == tmp_path / "posts" / "a-small-test-post" / "index.md"
    meta, body = read_post(post)
    assert meta == {"title": 'A: small "test" post', "date": dt.date(2024, 3, 9), "description": "Checks the converter.",
                    "categories": ["test", "plots"]}
    images = list((post.parent / "images").iterdir())
    assert len(images) == 1 and images[0].suffix == ".png"
    assert images[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"](images/{images[0].name})" in body
    assert "Some *prose*." in body and "print(2 + 2)" in body and "4" in body
    assert "hidden_setup" not in body and "#|" not in body and "# A: small" not in body


def test_arguments_override_the_notebook_and_date_defaults_to_today(notebook, tmp_path):
    post = notebook_to_post(notebook, tmp_path, title="Other title", description="")
    meta, _ = read_post(post)
    assert meta["title"] == "Other title" and meta["date"] == dt.date.today() and "description" not in meta


def test_never_overwrites_silently(notebook, tmp_path):
    post = notebook_to_post(notebook, tmp_path, date="2024-01-01")
    before = post.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        notebook_to_post(notebook, tmp_path, date="2024-02-02")
    assert post.read_bytes() == before
    notebook_to_post(notebook, tmp_path, date="2024-02-02", overwrite=True)
    assert read_post(post)[0]["date"] == dt.date(2024, 2, 2)


def test_overwrite_removes_only_the_images_the_last_conversion_wrote(notebook, tmp_path):
    post = notebook_to_post(notebook, tmp_path, date="2024-01-01")
    images = post.parent / "images"
    (old,) = images.iterdir()
    mine = images / "photo.png"                    # files the converter did not write stay
    mine.write_bytes(b"mine")
    (post.parent / "notes.txt").write_text("mine")
    nb = nbformat.read(notebook, as_version=4)
    nb.cells.insert(2, nbformat.v4.new_code_cell("plt.plot([0, 1])", outputs=list(nb.cells[2].outputs)))  # two figures now
    nbformat.write(nb, notebook)
    notebook_to_post(notebook, tmp_path, date="2024-01-02", overwrite=True)
    body = read_post(post)[1]
    written = sorted(p.name for p in images.iterdir() if p != mine)
    assert len(written) == 2 and all(f"](images/{n})" in body for n in written) and mine.read_bytes() == b"mine"
    nb.cells = [c for c in nb.cells if not c.get("outputs")]  # the figures taken out of the notebook
    nbformat.write(nb, notebook)
    notebook_to_post(notebook, tmp_path, date="2024-01-03", overwrite=True)
    assert sorted(images.iterdir()) == [mine] and (post.parent / "notes.txt").read_text() == "mine"
    assert "](images/" not in read_post(post)[1] and not old.exists()


def test_a_tampered_record_deletes_nothing_outside_images(notebook, tmp_path):
    post = notebook_to_post(notebook, tmp_path / "posts", date="2024-01-01")
    outside = tmp_path / "keep.png"
    outside.write_bytes(b"keep")
    (post.parent / ".post-images.json").write_text('["../../keep.png", "index.md", "images/../index.md", 3]')
    notebook_to_post(notebook, tmp_path / "posts", date="2024-01-02", overwrite=True)
    assert outside.read_bytes() == b"keep" and post.is_file()


def test_bad_input_gets_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook"):
        notebook_to_post(tmp_path / "missing.ipynb", tmp_path)
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable notebook"):
        notebook_to_post(broken, tmp_path)
    with pytest.raises(ValueError, match="date"):
        front_matter("t", "9 March 2024")
    with pytest.raises(ValueError, match="title"):
        front_matter("  ", "2024-03-09")


@pytest.mark.skipif(QUARTO is None, reason="Quarto is not installed, and cannot be installed offline here: the render check runs where it is")
def test_quarto_renders_the_post(notebook, tmp_path):
    site = tmp_path / "blog"
    subprocess.run([QUARTO, "create", "project", "blog", str(site), "--no-open"], check=True, capture_output=True, timeout=300)
    post = notebook_to_post(notebook, site / "posts", date="2024-03-09")
    subprocess.run([QUARTO, "render", str(site)], check=True, capture_output=True, timeout=600)
    page = site / "_site" / "posts" / post.parent.name / "index.html"
    assert page.is_file() and 'A: small "test" post' in page.read_text(encoding="utf-8").replace("&quot;", '"')
    assert list((site / "_site" / "posts" / post.parent.name / "images").glob("*.png"))

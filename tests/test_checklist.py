"""course.checklist (appendix B): answers saved as JSON in the workspace and reloaded, the Markdown export, damaged files
reported and never overwritten silently, and the ipywidgets form round trip."""
import json

import pytest

from course.checklist import (ChecklistError, ChecklistForm, SECTIONS, checklist_path, item_ids, load_answers, new_answers,
                              progress, save_answers, to_markdown)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_WORKSPACE", str(tmp_path / "ws"))
    return tmp_path / "ws"


def test_path_is_in_the_workspace_and_names_are_checked(workspace):
    assert checklist_path("churn") == workspace / "checklists" / "churn.json"
    for bad in ("../escape", "a/b", "", ".hidden", "x.json", "a" * 80):
        with pytest.raises(ValueError, match="not a checklist name"):
            checklist_path(bad)


def test_sections_are_the_six_of_the_appendix():
    assert list(SECTIONS) == ["Strategy", "Data", "Analytics", "Implementation", "Maintenance", "Constraints"]
    assert len(item_ids()) == len(set(item_ids())) and all(len(items) >= 3 for items in SECTIONS.values())


def test_save_and_reload_restores_the_answers(workspace):
    a = new_answers("Project X")
    a["items"]["data.label"] = {"done": True, "notes": "proxy: 30-day cancellation\nsecond line, é"}
    path = save_answers(a, checklist_path("x"))
    assert path.parent == workspace / "checklists"
    b = load_answers(path)
    assert b["items"] == a["items"] and b["project"] == "Project X" and b["updated"]
    assert progress(b) == (1, len(item_ids()))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]   # no temporary file left behind


def test_missing_file_gives_empty_answers(workspace):
    assert load_answers(checklist_path("nothing")) == new_answers()


def test_items_unknown_to_this_version_are_kept(workspace):
    path = checklist_path("old")
    a = new_answers()
    a["items"]["ethics.appeal"] = {"done": True, "notes": "kept"}
    save_answers(a, path)
    assert load_answers(path)["items"]["ethics.appeal"] == {"done": True, "notes": "kept"}


@pytest.mark.parametrize("content,message", [
    ("{\"version\": 1, \"items\": {", "not valid JSON"),
    ("[1, 2]", "no 'items' table"),
    (json.dumps({"version": 7, "items": {}}), "version 7"),
    (json.dumps({"version": 1, "items": {"data.access": {"done": "yes"}}}), "data.access"),
    (b"\xff\xfe\x00", "not valid JSON"),
])
def test_damaged_files_are_reported_and_never_overwritten_silently(workspace, content, message):
    path = checklist_path("damaged")
    path.parent.mkdir(parents=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    before = path.read_bytes()
    with pytest.raises(ChecklistError, match=message) as e:
        load_answers(path)
    assert "left as it is" in str(e.value)
    with pytest.raises(ChecklistError):
        save_answers(new_answers("new"), path)
    assert path.read_bytes() == before
    save_answers(new_answers("new"), path, replace_damaged=True)
    assert load_answers(path)["project"] == "new"
    kept = list(path.parent.glob("damaged.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == before


def test_answers_of_the_wrong_shape_are_not_saved(workspace):
    a = new_answers()
    a["items"]["data.access"] = {"done": 1}
    with pytest.raises(ChecklistError):
        save_answers(a, checklist_path("wrong"))
    assert not checklist_path("wrong").exists()
    damaged = checklist_path("wrong")
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_text("{not json")
    with pytest.raises(ChecklistError):  # bad answers: the damaged file is not even moved aside
        save_answers(a, damaged, replace_damaged=True)
    assert damaged.read_text() == "{not json" and not list(damaged.parent.glob("wrong.json.damaged-*"))


def test_markdown_export():
    a = new_answers("Shop forecasts")
    a["items"]["strategy.decision"] = {"done": True, "notes": "Orders for next week.\n\nSecond paragraph."}
    md = to_markdown(a)
    assert md.startswith("# Data project checklist: Shop forecasts\n")
    assert f"1 of {len(item_ids())} items done." in md
    assert [l for l in md.splitlines() if l.startswith("## ")] == [f"## {s}" for s in SECTIONS]
    assert "- [x] What decision or action" in md and md.count("- [ ] ") == len(item_ids()) - 1
    assert "  > Orders for next week.\n  >\n  > Second paragraph." in md
    assert to_markdown(new_answers()).startswith("# Data project checklist: Untitled project")


def test_form_round_trip_and_damaged_file(workspace):
    path = checklist_path("form")
    form = ChecklistForm(path)
    assert not form.damaged and "New checklist" in form.status.value
    assert len(form.sections.children) == len(SECTIONS) and form.sections.get_title(0) == "Strategy"
    form.project.value = "Form test"
    form.boxes["maintenance.rollback"].value = True
    form.notes["analytics.groups"].value = "FNR per region"
    assert form.save()
    again = ChecklistForm(path)
    assert again.project.value == "Form test" and again.boxes["maintenance.rollback"].value
    assert again.notes["analytics.groups"].value == "FNR per region"
    md = again.export()
    assert md == path.with_suffix(".md") and "- [x] Can you go back" in md.read_text()
    path.write_text("not json")
    broken = ChecklistForm(path)
    assert broken.damaged and "not valid JSON" in broken.status.value
    assert not broken.save() and path.read_text() == "not json"
    broken.replace.value = True
    assert broken.save() and not broken.damaged and load_answers(path)["project"] == ""

"""The image cleaner of course.vision.clean (chapter 2) on a temporary folder: choices change nothing until confirmed,
then keep / delete / move are applied exactly; bad plans are refused before anything changes."""
from pathlib import Path

import pytest
from PIL import Image

from course.vision.clean import apply_cleaning, ImageCleaner


@pytest.fixture
def bears(tmp_path):
    root = tmp_path / "bears"
    for cls in ("black", "grizzly", "teddy"):
        (root / cls).mkdir(parents=True)
        for i in range(3): Image.new("RGB", (30, 20), (40 * i, 90, 20)).save(root / cls / f"{i}.jpg")
    return root


def listing(root): return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def rows_for(root):
    "Cleaner rows (file, label, prediction, loss) as split_losses gives them, highest loss first."
    rows = [(f, f.parent.name, "teddy", 3.0 - 0.1 * k) for k, f in enumerate(sorted(root.rglob("*.jpg")))]
    return {"train": rows[::2], "valid": rows[1::2]}


def test_widget_choices_change_nothing_until_confirmed(bears):
    before = listing(bears)
    cleaner = ImageCleaner(rows_for(bears), ["black", "grizzly", "teddy"], bears, max_n=2)
    cleaner.cls.value, cleaner.split.value = "black", "train"
    shown = cleaner.shown()
    assert len(shown) == 2 and all(r[1] == "black" for r in shown) and shown[0][3] > shown[1][3]
    assert len(cleaner.grid.children) == 2
    menus = [card.children[2] for card in cleaner.grid.children]
    assert menus[0].options == ("keep", "delete", "move to grizzly", "move to teddy")
    menus[0].value = "delete"                       # as a click in the browser would
    menus[1].value = "move to teddy"
    assert cleaner.plan() == [(shown[0][0], "delete"), (shown[1][0], "teddy")]
    cleaner.confirm_step()                          # the review: lists the plan, applies nothing
    assert cleaner.apply() == cleaner.plan() and listing(bears) == before
    done = cleaner.apply(confirm=True)
    assert len(done) == 2 and not shown[0][0].exists() and not shown[1][0].exists()
    assert (bears / "teddy" / shown[1][0].name).exists() or list((bears / "teddy").glob(shown[1][0].stem + "_*"))
    assert len(listing(bears)) == len(before) - 1 and cleaner.plan() == []
    assert all(r[0].exists() for split in cleaner.rows.values() for r in split)   # moved and deleted rows are gone


def test_menu_back_to_keep_forgets_the_choice(bears):
    cleaner = ImageCleaner(rows_for(bears), ["black", "grizzly", "teddy"], bears)
    f = cleaner.shown()[0][0]
    cleaner.choose(f, "delete"); cleaner.choose(f, "keep")
    assert cleaner.plan() == [] and cleaner.apply(confirm=True) == [] and f.exists()


def test_apply_keep_delete_move(bears):
    plan = [(bears / "black/0.jpg", "keep"), (bears / "black/1.jpg", "delete"), (bears / "grizzly/0.jpg", "teddy"),
            (bears / "teddy/2.jpg", "grizzly")]
    done = apply_cleaning(plan, bears)
    assert [a for _, a in done] == ["delete", "teddy", "grizzly"]
    assert listing(bears) == ["black/0.jpg", "black/2.jpg", "grizzly/1.jpg", "grizzly/2.jpg", "grizzly/2_1.jpg",
                              "teddy/0.jpg", "teddy/0_1.jpg", "teddy/1.jpg"]   # moved files never overwrite


def test_move_to_a_new_class_makes_its_folder(bears):
    apply_cleaning([(bears / "teddy/0.jpg", "panda")], bears)
    assert (bears / "panda/0.jpg").exists() and not (bears / "teddy/0.jpg").exists()


@pytest.mark.parametrize("plan, match", [
    ("outside", "not inside"), ("traversal", "not a class folder"), ("missing", "no longer there"), ("empty", "not a class folder")])
def test_bad_plans_change_nothing(bears, tmp_path, plan, match):
    outside = tmp_path / "elsewhere.jpg"
    Image.new("RGB", (8, 8)).save(outside)
    good = (bears / "black/0.jpg", "delete")   # first in every plan: must survive the refusal
    bad = {"outside": (outside, "delete"), "traversal": (bears / "black/1.jpg", "../../escape"),
           "missing": (bears / "black/9.jpg", "delete"), "empty": (bears / "black/1.jpg", "")}[plan]
    before = listing(bears)
    with pytest.raises((ValueError, FileNotFoundError), match=match): apply_cleaning([good, bad], bears)
    assert listing(bears) == before and outside.exists()

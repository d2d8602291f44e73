"""Shared fixtures: a throw-away course repository built from the fixture notebooks."""
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def course_home(tmp_path, monkeypatch):
    "A fresh course home, so tests never touch the learner's ~/.course."
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("COURSE_HOME", str(home))
    for var in ("COURSE_DATA", "COURSE_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def mini_repo(tmp_path, course_home):
    "A small course repository: the project's settings.ini and the fixture chapters in nbs/."
    root = tmp_path / "repo"
    (root / "nbs").mkdir(parents=True)
    (root / "course").mkdir()
    shutil.copy(REPO / "settings.ini", root / "settings.ini")
    for nb in (FIXTURES / "nbs").glob("*.ipynb"):
        shutil.copy(nb, root / "nbs" / nb.name)
    return root

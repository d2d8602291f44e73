"""The README tells the truth: its links exist, every written chapter is linked, the commands exist."""
import re
from pathlib import Path

from course.tools.build import chapter_notebooks
from course.tools.cli import make_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_links_point_to_files():
    for target in re.findall(r"\]\(((?:full|stripped|nbs|tests|bench)/[^)#]+)\)", README):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_every_chapter_is_linked():
    for nb in chapter_notebooks(ROOT / "nbs"):
        assert f"(full/{nb.name})" in README and f"(stripped/{nb.name})" in README, f"{nb.name} is not in the README's table"


def test_commands_exist():
    subcommands = set(make_parser()._subparsers._group_actions[0].choices)
    for sub in re.findall(r"`course (\w+)", README):
        assert sub in subcommands, f"README mentions `course {sub}`, which does not exist"

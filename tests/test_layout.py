"""The package's layout rules (DESIGN.md, "Layout of the package"), checked on the exported `course/`.

- `data/` imports no domain wing (vision, text, tabular, collab) and no tools; `callback/` never imports
  `learner`; the taught library never imports `tools/` or `quiz/`; no import cycle, counting the package
  `__init__` that importing a submodule runs first.
- A name is exported (listed in `__all__`) by exactly one module.
- Every module has a docstring, and a module that chapters build names those chapters.
- No two places in the taught library share six or more lines of the same shape (one builder per idea).
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "course"
DOMAINS = ("vision", "text", "tabular", "collab")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py")) if p.name != "_modidx.py"}


def imports_of(path: Path) -> set[str]:
    "Every course module `path` imports, at the top or inside a function, relative imports resolved."
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "course"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else: mod = node.module or ""
            if mod.split(".")[0] != "course": continue
            for a in node.names:  # `from course.vision.models import xresnet` imports a module
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def wing(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_tree_has_the_designed_folders():
    for folder in ("data", "callback", "vision", "vision/models", "quiz", "tools", "data/twins"):
        assert (PKG / folder / "__init__.py").is_file(), folder
    for module in ("learner", "optim", "metrics", "layers", "interpret", "export", "config", "utils"):
        assert (PKG / f"{module}.py").is_file(), module
    old = [p.name for p in PKG.glob("*.py") if p.stem in ("data", "datasets", "vision", "vision_learner", "resnet", "conv",
                                                          "callback", "quiz", "progress", "build", "cli", "twins", "weights")]
    assert not old, f"modules of the old flat layout are back: {old}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if wing(n) == "data"))
def test_data_imports_no_domain_wing_and_no_tools(name):
    bad = {m for m in GRAPH[name] if wing(m) in DOMAINS + ("tools", "quiz")}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if wing(n) == "callback"))
def test_callback_never_imports_learner(name):
    assert "course.learner" not in GRAPH[name], f"{name} imports course.learner"


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if wing(n) not in ("tools", "quiz")))
def test_taught_library_never_imports_tools_or_quiz(name):
    bad = {m for m in GRAPH[name] if wing(m) in ("tools", "quiz")}
    assert not bad, f"{name} imports {sorted(bad)}"


def _edges(name: str) -> set[str]:
    "What importing `name` runs: its imports, and the package __init__ of each one outside its own package."
    out = set()
    for m in GRAPH[name]:
        out.add(m)
        parent = m.rsplit(".", 1)[0]
        while parent != "course" and parent in MODULES and parent != name and not name.startswith(parent + "."):
            out.add(parent)
            parent = parent.rsplit(".", 1)[0]
    return out


def test_no_import_cycle():
    edges = {n: _edges(n) for n in GRAPH}
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(edges[n]):
            if state.get(m) == "open": cycles.append(stack[stack.index(m):] + [m])
            elif m not in state: visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(edges):
        if n not in state: visit(n, [n])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle_through_a_package_init():
    saved = dict(GRAPH)
    try:
        GRAPH["course.quiz.checker"] = GRAPH["course.quiz.checker"] | {"course.tools.progress"}
        GRAPH["course.tools.progress"] = GRAPH["course.tools.progress"] | {"course.quiz.keys"}
        with pytest.raises(AssertionError, match="import cycles"): test_no_import_cycle()
    finally:
        GRAPH.clear(); GRAPH.update(saved)


def exported_names(path: Path) -> list[str]:
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return [ast.literal_eval(e) for e in node.value.elts]
    return []


def test_no_name_is_exported_twice():
    seen, twice = {}, []
    for name, path in MODULES.items():
        for n in exported_names(path):
            if n in seen: twice.append(f"{n} ({seen[n]} and {name})")
            seen[n] = name
    assert not twice, "exported by two modules: " + ", ".join(twice)


def _chapters_in(text: str) -> set[int]:
    found = set()
    for m in re.finditer(r"[Cc]hapters? ((?:\d+)(?:(?:, | and |, and )\d+)*)", text):
        found |= {int(x) for x in re.findall(r"\d+", m.group(1))}
    return found


@pytest.mark.parametrize("name", sorted(n for n, p in MODULES.items() if n != "course" and "AUTOGENERATED" in p.read_text()))
def test_module_docstring_says_what_it_holds_and_which_chapters_build_it(name):
    text = MODULES[name].read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(text))
    assert doc and len(doc.split()) >= 5, f"{name} has no docstring saying what it holds"
    built_by = {int(m) for m in re.findall(r"^# %% [./]*nbs/(\d\d)_\w+\.ipynb", text, re.M)}
    assert _chapters_in(doc) == built_by, (f"{name}'s docstring names chapters {sorted(_chapters_in(doc))}, "
                                           f"but its code comes from chapters {sorted(built_by)}")


def test_taught_library_repeats_no_six_lines():
    "One builder per idea: no six consecutive lines (ignoring blanks and comments) appear twice in the taught library."
    def lines(path):
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            s = line.strip()
            if s and not s.startswith("#") and not s.startswith(("import ", "from ", '"', "'", ")", "]", "}")):
                out.append((re.sub(r"\s+", " ", s), i + 1))
        return out
    seen, repeats = {}, []
    for name, path in MODULES.items():
        if wing(name) in ("tools", "quiz") or name.startswith("course.data.twins"): continue
        ls = lines(path)
        for k in range(len(ls) - 5):
            window = tuple(s for s, _ in ls[k:k + 6])
            if window in seen:
                repeats.append(f"{seen[window][0]}:{seen[window][1]} and {name}:{ls[k][1]}")
            else: seen[window] = (name, ls[k][1])
    assert not repeats, "repeated code: " + "; ".join(repeats[:10])

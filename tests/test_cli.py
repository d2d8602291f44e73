"""The `course` command: help, start, doctor, and one clear line (never a traceback) for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from course.tools import cli
from course.tools.build import build

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=None, env=None):
    "Run the real console command, as a learner would."
    return subprocess.run([sys.executable, "-c", "from course.tools.cli import cli; cli()", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def one_clear_line(proc):
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("sub", ["build", "start", "doctor", "check", "progress", "test"])
def test_every_subcommand_has_help(sub):
    with pytest.raises(SystemExit) as e:
        cli.make_parser().parse_args([sub, "--help"])
    assert e.value.code == 0


def test_start_copies_and_never_overwrites(mini_repo, tmp_path, capsys):
    build(mini_repo, log=lambda *a: None)
    ws = tmp_path / "ws"
    dest = cli.start_chapter("1", ws, root=mini_repo)
    assert dest == ws / "01_demo.ipynb" and dest.read_bytes() == (mini_repo / "stripped" / "01_demo.ipynb").read_bytes()
    dest.write_text(dest.read_text().replace('check(\\"01.02\\", \\"\\")', 'check(\\"01.02\\", \\"def\\")'))
    mine = dest.read_bytes()
    with pytest.raises(cli.CourseError, match="already exists"):
        cli.start_chapter("01", ws, root=mini_repo)
    assert dest.read_bytes() == mine
    cli.start_chapter("01_demo", ws, force=True, root=mini_repo)
    backups = list(ws.glob("01_demo.*.bak.ipynb"))
    assert len(backups) == 1 and backups[0].read_bytes() == mine, "the learner's work is kept on --force"


def test_the_copy_names_this_python_so_jupyterlab_opens_it_unmodified(mini_repo, tmp_path):
    build(mini_repo, log=lambda *a: None)
    stripped = mini_repo / "stripped" / "01_demo.ipynb"
    here = sys.version.split()[0]
    stripped.write_text(stripped.read_text().replace(f'"version": "{here}"', '"version": "3.10.1"'))
    dest = cli.start_chapter("1", tmp_path / "ws", root=mini_repo)
    copy, source = json.loads(dest.read_text()), json.loads(stripped.read_text())
    assert copy["metadata"]["language_info"]["version"] == here and source["metadata"]["language_info"]["version"] == "3.10.1"
    source["metadata"]["language_info"]["version"] = here
    assert copy == source, "only the version changes"


def test_two_forced_starts_in_one_second_keep_both_copies(mini_repo, tmp_path, monkeypatch, capsys):
    build(mini_repo, log=lambda *a: None)
    ws = tmp_path / "ws"
    dest = cli.start_chapter("1", ws, root=mini_repo)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt, *a: "20261201-120000")  # both runs in the same second
    versions = []
    for i in range(3):
        dest.write_text(dest.read_text() + " " * (i + 1))
        versions.append(dest.read_bytes())
        cli.start_chapter("1", ws, force=True, root=mini_repo)
    kept = sorted(p.read_bytes() for p in ws.glob("01_demo.*.bak.ipynb"))
    assert kept == sorted(versions), "every forced start keeps the copy it replaces"
    assert dest.read_bytes() == (mini_repo / "stripped" / "01_demo.ipynb").read_bytes()


@pytest.mark.parametrize("kind", ["dangling link", "link to a file", "folder"])
def test_start_never_writes_through_what_is_at_the_copy(mini_repo, tmp_path, kind):
    build(mini_repo, log=lambda *a: None)
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir(); outside.mkdir()
    target, dest = outside / "victim.ipynb", ws / "01_demo.ipynb"
    if kind == "link to a file": target.write_text("someone else's file")
    if kind == "folder": dest.mkdir()
    else: dest.symlink_to(target)
    before = {p: p.read_bytes() for p in outside.iterdir()}
    for force in (False, True):
        with pytest.raises(cli.CourseError, match="link or a folder"):
            cli.start_chapter("1", ws, force=force, root=mini_repo)
    assert {p: p.read_bytes() for p in outside.iterdir()} == before
    assert sorted(p.name for p in ws.iterdir()) == ["01_demo.ipynb"]


def test_the_working_folder_picks_the_clone(mini_repo, tmp_path, monkeypatch):
    "With two clones, `course` run inside one works on that one, whichever the package was installed from."
    from course.config import repo_root, workspace_dir
    from course.tools.build import find_root
    build(mini_repo, log=lambda *a: None)
    monkeypatch.chdir(mini_repo / "nbs")
    assert repo_root() == find_root() == mini_repo and workspace_dir() == mini_repo / "workspace"
    installed_ws = REPO / "workspace"
    before = sorted(installed_ws.iterdir()) if installed_ws.is_dir() else None
    env = dict(os.environ, COURSE_HOME=str(tmp_path / "home"))
    env.pop("COURSE_WORKSPACE", None)
    proc = run("start", "1", cwd=mini_repo, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (mini_repo / "workspace" / "01_demo.ipynb").is_file()
    assert (sorted(installed_ws.iterdir()) if installed_ws.is_dir() else None) == before


def test_start_bad_input_is_one_line(mini_repo, tmp_path):
    build(mini_repo, log=lambda *a: None)
    env = dict(os.environ, COURSE_HOME=str(tmp_path / "home"))
    line = one_clear_line(run("start", "42", cwd=mini_repo, env=env))
    assert "no chapter '42'" in line and "01" in line
    proc = run("start", "1", "--workspace", str(tmp_path / "missing" / "deeper"), cwd=mini_repo, env=env)
    assert proc.returncode == 2 and "does not exist" in one_clear_line(proc)
    (tmp_path / "afile").write_text("x")
    proc = run("start", "1", "--workspace", str(tmp_path / "afile"), cwd=mini_repo, env=env)
    assert proc.returncode == 2 and "is a file" in one_clear_line(proc)
    unwritable = "/proc/course-workspace" if os.geteuid() == 0 else "/"
    proc = run("start", "1", "--workspace", unwritable, cwd=mini_repo, env=env)
    assert proc.returncode == 2 and one_clear_line(proc)


def test_start_before_build_says_what_to_do(mini_repo):
    with pytest.raises(cli.CourseError, match="course build 1"):
        cli.start_chapter("1", mini_repo / "ws", root=mini_repo)


def test_outside_the_repository(tmp_path):
    proc = run("build", "--check", cwd=tmp_path, env=dict(os.environ, COURSE_HOME=str(tmp_path)))
    # an editable install still finds its repository; anywhere else the message says to cd into a clone
    assert "Traceback" not in proc.stderr


def test_unreadable_notebook_is_named(mini_repo):
    (mini_repo / "nbs" / "02_broken.ipynb").write_text("{not json")
    proc = run("build", "--check", cwd=mini_repo)
    assert proc.returncode == 2
    line = one_clear_line(proc)
    assert "02_broken.ipynb" in line and "not a valid notebook" in line


def test_doctor_table_and_broken_install(monkeypatch, capsys):
    def broken():
        raise ImportError("libcudart.so: cannot open shared object file")
    monkeypatch.setattr(cli, "DOCTOR_CHECKS", [("torchvision", broken), *cli.DOCTOR_CHECKS[:1]])
    code = cli.main(["doctor"])
    out = capsys.readouterr().out
    assert code == 1 and "torchvision" in out and "fail" in out and "pip install --force-reinstall" in out
    assert "Traceback" not in out


def test_doctor_table_fits_a_notebook_cell(monkeypatch, capsys):
    long = ("warn", "x" * 30 + " a long finding " * 6, "do this, then that, " * 12)
    monkeypatch.setattr(cli, "DOCTOR_CHECKS", [("data folder", lambda: long), ("Python", lambda: ("ok", "3.11.7", ""))])
    monkeypatch.delenv("COLUMNS", raising=False)
    assert cli.main(["doctor"]) == 0  # not a terminal: 100 characters, as in a notebook cell (`!course doctor`)
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100 and "→ do this" in out and out.count("do this") == 12
    monkeypatch.setenv("COLUMNS", "72")  # a terminal 72 characters wide
    cli.main(["doctor"])
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 72


def fake_python(tmp_path, prefix, has_course=True):
    "An executable that answers the doctor's question as a Python installed in `prefix` would."
    exe = tmp_path / "env" / "bin" / "python"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!/bin/sh\necho {prefix}\necho {has_course}\n")
    exe.chmod(0o755)
    return str(exe)


def test_doctor_names_the_fix_when_the_kernel_runs_another_python(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "_kernel_python", lambda: sys.executable)
    assert cli._check_kernel()[0] == "ok"
    other = fake_python(tmp_path, tmp_path / "env")
    monkeypatch.setattr(cli, "_kernel_python", lambda: other)
    status, found, todo = cli._check_kernel()
    assert status == "warn" and other in found and sys.executable in found
    assert todo == f"activate the notebooks' environment in this terminal (JupyterLab's too): source {tmp_path / 'env' / 'bin' / 'activate'}"
    (tmp_path / "env").rename(tmp_path / "env2")
    other = fake_python(tmp_path, tmp_path / "env", has_course=False)
    status, found, todo = cli._check_kernel()
    assert status == "warn" and "cannot import the course" in todo and str(Path(sys.executable).parent / "activate") in todo
    monkeypatch.setattr(cli, "_kernel_python", lambda: str(tmp_path / "gone" / "python"))
    status, found, todo = cli._check_kernel()
    assert status == "warn" and "does not exist" in found and "-m ipykernel install --user --name python3" in todo


def test_the_kernel_python_is_the_kernel_specs(monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    class Spec: argv = ["/opt/env/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", lambda self, name: Spec())
    assert cli._kernel_python() == "/opt/env/bin/python"
    Spec.argv = ["python", "-m", "ipykernel_launcher"]  # a plain `python`: the Python that runs the Jupyter server
    import jupyter_server.serverapp
    monkeypatch.setattr(jupyter_server.serverapp, "list_running_servers", lambda: iter([]))
    assert cli._kernel_python() is None  # no server running: unknown
    if not Path("/proc/self/cmdline").exists(): return
    server = subprocess.Popen([sys.executable, "-c", "import sys, time; print(1, flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:  # it stands for a running server; once it has printed, its command line is readable
        server.stdout.readline()
        monkeypatch.setattr(jupyter_server.serverapp, "list_running_servers", lambda: iter([{"pid": server.pid}]))
        assert cli._kernel_python() == sys.executable
    finally:
        server.kill(); server.wait()


def test_doctor_runs_for_real():
    proc = run("doctor")
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr
    for what in ("Python", "torch", "torchvision", "GPU", "ipywidgets", "disk", "data folder", "internet", "kernel"):
        assert what in proc.stdout


def test_check_and_progress_from_the_shell(mini_repo, tmp_path):
    build(mini_repo, log=lambda *a: None)
    env = dict(os.environ, COURSE_HOME=str(tmp_path / "home"), COURSE_WORKSPACE=str(tmp_path / "ws"))
    assert run("start", "1", cwd=mini_repo, env=env).returncode == 0
    copy = tmp_path / "ws" / "01_demo.ipynb"
    copy.write_text(copy.read_text().replace('check(\\"01.01\\", None)', 'check(\\"01.01\\", 5)'))
    before = copy.read_bytes()
    proc = run("check", "1", cwd=mini_repo, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "01.01" in proc.stdout and "01.02" in proc.stdout and "Traceback" not in proc.stderr
    assert copy.read_bytes() == before, "checking never modifies the learner's notebook"
    proc = run("progress", cwd=mini_repo, env=env)
    assert proc.returncode == 0 and "01" in proc.stdout
    line = one_clear_line(run("check", str(tmp_path / "nope.ipynb"), cwd=mini_repo, env=env))
    assert "nope.ipynb" in line


def test_quickstart_trains_the_first_model_offline(tmp_path):
    import re
    from course.config import data_dir
    # A home of its own, but the run's data folder: the twin and the resnet34 stand-in are made once for every test
    # and notebook that needs them (the file lock makes the others wait), and pretraining on a loaded machine takes long.
    env = dict(os.environ, COURSE_HOME=str(tmp_path / "home"), COURSE_DATA=str(data_dir()), COURSE_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", "from course.tools.cli import cli; cli()", "quickstart"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"^error_rate: (\d\.\d{4})$", proc.stdout, re.M)
    assert m and float(m.group(1)) < 0.25, proc.stdout  # a coin flip is 0.5; the stand-in body is no ImageNet
    assert "offline twin" in proc.stdout and "stand-in" in proc.stdout
    assert re.search(r"prediction for \S+\.jpg: (cat|dog), probability \d\.\d{4}", proc.stdout)
    assert "course start" in proc.stdout

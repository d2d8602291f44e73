"""Saved learners: `load_learner` runs only the course's registered builders, whatever the file says, and
`save`/`export` never leave a half-written file, even when the process is killed mid-write.

Every hostile file in `HOSTILE` must be refused with a clear ValueError (no other exception, no traceback
from deep inside torch), and nothing it asks for may run: each names a command that would create a marker
file, and the marker must not exist afterwards.
"""
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

from course.export import build_model, describe_model, load_learner
from course.learner import Learner
from course.layers import tiny_cnn
from course.utils import FACTORIES, register_factory


def exported(tmp_path, factory=tiny_cnn, **kwargs):
    "A real export of a small model, and its description and weights."
    learn = Learner(None, build_model(factory, **(kwargs or {"n_out": 3, "widths": [4, 8]})), path=tmp_path,
                    progress=False)
    learn.vocab = ["a", "b", "c"]
    file = learn.export("good.pth")
    state = torch.load(file, weights_only=True)
    return file, json.loads(state["description"]), state["model"]


def write(path, desc, weights):
    "An export file with description `desc` (a dict, or a raw string) and `weights`."
    torch.save({"description": desc if isinstance(desc, str) else json.dumps(desc), "model": weights}, path)
    return path


class Boom:
    "A pickle that runs a command when unpickled."
    def __init__(self, cmd): self.cmd = cmd
    def __reduce__(self): return (os.system, (self.cmd,))


def _with(desc, **changes):
    out = json.loads(json.dumps(desc))
    for key, value in changes.items():
        target = out
        *path, last = key.split("__")
        for p in path: target = target[p]
        target[last] = value
    return out


def _names(marker):
    "Functions an attacker might name, each with arguments that would create `marker`."
    touch = f"touch {marker}"
    return [
        ("subprocess:run", {"args": ["sh", "-c", touch]}),
        ("os:system", {"command": touch}),
        ("course.tools.build:subprocess.run", {"args": ["sh", "-c", touch]}),
        ("course.tools.cli:os.system", {"command": touch}),
        ("course.learner:torch.load", {"f": str(marker), "weights_only": False}),
        ("course.export:importlib.import_module", {"name": "antigravity"}),
        ("builtins:eval", {"source": f"__import__('os').system('{touch}')"}),
        ("course.utils:atomic_write", {"path": str(marker), "data": "x"}),
        ("course.layers:conv", {"ni": 3, "nf": 8}),
        ("course.__main__:main", {}),
        ("course..tools:x", {}),
        ("course.tools.cli:main", {"argv": ["build"]}),
        ("torch.nn.modules.linear:Linear.__init__.__globals__.os.system", {"command": touch}),
        ("torchvision.models:get_model", {"name": "resnet18"}),
        ("course.vision.learner:torch.hub.load", {"repo_or_dir": "x", "model": "y"}),
    ]


def hostile_cases(tmp_path, marker):
    "(name, file) pairs: every way a file can ask for more than a registered builder with its own weights."
    good, desc, weights = exported(tmp_path)
    cases, n = [], 0

    def case(name, desc_or_raw, w=weights):
        nonlocal n
        n += 1
        cases.append((name, write(tmp_path / f"h{n}.pth", desc_or_raw, w)))

    for fn, kwargs in _names(marker):
        case(f"factory {fn}", _with(desc, model__factory=fn, model__kwargs=kwargs))
    case("loss os.system", _with(desc, loss_func="os:system"))
    case("loss course.tools.cli:os.system", _with(desc, loss_func="course.tools.cli:os.system"))
    case("weights_only argument", _with(desc, model__kwargs={"n_out": 3, "widths": [4, 8], "weights_only": False}))
    case("private argument", _with(desc, model__kwargs={"n_out": 3, "__class__": 1}))
    case("unknown argument", _with(desc, model__kwargs={"n_out": 3, "widths": [4, 8], "shell": "rm -rf /"}))
    case("argument of the wrong type", _with(desc, model__kwargs={"n_out": "three", "widths": [4, 8]}))
    case("huge model, small file", _with(desc, model__kwargs={"n_out": 10**9, "widths": [4, 8]}))
    case("huge Linear, small file", _with(desc, model__factory="torch.nn.modules.linear:Linear",
                                          model__kwargs={"in_features": 10**6, "out_features": 10**6}))
    case("weights of other shapes", desc, {k: v[..., :1] if v.ndim else v for k, v in weights.items()})
    case("missing weights", desc, dict(list(weights.items())[:-1]))
    case("extra weights", desc, {**weights, "extra": torch.zeros(2)})
    case("weights not tensors", desc, {k: 1 for k in weights})
    case("NaN in arguments", json.dumps(desc).replace('"n_out": 3', '"n_out": NaN'))
    case("description not JSON", "{this is not json")
    case("description deeply nested", "[" * 100_000 + "]" * 100_000)
    case("description a list", json.dumps([1, 2]))
    case("no format", _with(desc, format="something else"))
    case("future version", _with(desc, version=99))
    case("vocab not strings", _with(desc, vocab=[{"a": 1}]))
    case("kwargs not a dict", _with(desc, model__kwargs=["n_out", 3]))
    case("factory not a string", _with(desc, model__factory=["os", "system"]))
    case("huge integer", json.dumps(desc).replace('"n_out": 3', '"n_out": ' + "9" * 5000))

    raw = [("pickle that runs a command", pickle.dumps(Boom(f"touch {marker}"))),
           ("torch file whose pickle runs a command", None), ("empty file", b""), ("text file", b"hello"),
           ("truncated export", good.read_bytes()[:500]), ("zip that is not torch", None)]
    for name, data in raw:
        n += 1
        path = tmp_path / f"h{n}.pth"
        if name.startswith("torch file"): torch.save({"description": Boom(f"touch {marker}"), "model": weights}, path)
        elif name.startswith("zip"):
            with zipfile.ZipFile(path, "w") as z: z.writestr("data.pkl", pickle.dumps(Boom(f"touch {marker}")))
        else: path.write_bytes(data)
        cases.append((name, path))
    return cases


def test_hostile_exports_are_refused_and_run_nothing(tmp_path, capsys):
    marker = tmp_path / "ran"
    cases = hostile_cases(tmp_path, marker)
    assert len(cases) >= 40
    refused, other = [], []
    for name, path in cases:
        before = set(FACTORIES)
        try:
            load_learner(path)
            other.append((name, "loaded"))
        except ValueError as e:
            msg = str(e)
            assert msg and "Traceback" not in msg and len(msg) < 1000, (name, msg)
            refused.append(name)
        except Exception as e:  # any other exception is a traceback for the learner
            other.append((name, f"{type(e).__name__}: {e}"))
        new = {k: FACTORIES[k] for k in set(FACTORIES) - before}  # importing a course module registers its own builders
        assert all(f.__module__.startswith("course.") for f in new.values()), f"{name}: loading registered {new}"
        assert not marker.exists(), f"{name}: the file ran a command"
    assert not other, other
    print(f"saved-learner faults: {len(cases)} tried, {len(refused)} refused with a message, 0 tracebacks, 0 ran code")


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file"): load_learner(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="not a file"): load_learner(tmp_path)


def test_every_registered_builder_round_trips_in_a_fresh_process(tmp_path):
    "Each builder the course registers exports and loads back, in a process that imported only course.export."
    builders = [("course.layers:tiny_cnn", {"n_out": 2, "widths": [4, 8]}),
                ("course.vision.models.xresnet:xresnet18", {"n_out": 2, "widths": [4, 8, 8, 8]}),
                ("course.vision.learner:vision_model", {"arch": "resnet18", "n_out": 2, "pretrained": False}),
                ("course.vision.learner:unet_model", {"n_out": 2, "arch": "resnet18", "pretrained": False}),
                ("torch.nn.modules.linear:Linear", {"in_features": 4, "out_features": 2})]
    import course.vision.learner  # noqa: F401  (registers the vision builders here)
    code = ["import sys, torch", "from course.export import load_learner"]
    for i, (name, kwargs) in enumerate(builders):
        model = build_model(FACTORIES[name], **kwargs)
        assert describe_model(model)["factory"] == name
        learn = Learner(None, model, path=tmp_path, progress=False)
        learn.export(f"m{i}.pth")
        code.append(f"m = load_learner({str(tmp_path / f'm{i}.pth')!r}).model")
        code.append(f"torch.save(m.state_dict(), {str(tmp_path / f'm{i}.pt')!r})")
    out = subprocess.run([sys.executable, "-c", "\n".join(code)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for i, (name, kwargs) in enumerate(builders):
        saved = torch.load(tmp_path / f"m{i}.pt", weights_only=True)
        exported_weights = torch.load(tmp_path / f"m{i}.pth", weights_only=True)["model"]
        assert saved.keys() == exported_weights.keys()
        assert all(torch.equal(saved[k], exported_weights[k]) for k in saved), name


def test_unregistered_builders_cannot_be_exported(tmp_path):
    def my_cnn(n_out): return tiny_cnn(n_out)
    learn = Learner(None, build_model(my_cnn, n_out=3), path=tmp_path, progress=False)
    with pytest.raises(ValueError, match="register_factory"): learn.export()
    assert not (tmp_path / "export.pth").exists()
    register_factory(my_cnn, name="tests:my_cnn")
    try:
        learn.export()
        assert load_learner(tmp_path / "export.pth").model[-1].out_features == 3
    finally: FACTORIES.pop("tests:my_cnn")
    with pytest.raises(ValueError, match="not registered"): load_learner(tmp_path / "export.pth")


_KILL_MID_WRITE = """
import os, signal, sys
import torch
from course.export import build_model
from course.learner import Learner
from course.layers import tiny_cnn
learn = Learner(None, build_model(tiny_cnn, n_out=3, widths=[4, 8]), path=sys.argv[1], progress=False)
for p in learn.model.parameters(): p.data.fill_(7.0)
real_write = os.write
def die(*args, **kwargs): os.kill(os.getpid(), signal.SIGKILL)  # killed with the new bytes half on disk
os.fsync = die
learn.{method}
"""


@pytest.mark.parametrize("method", ['save("m")', 'export("export.pth")'])
def test_killed_mid_write_keeps_the_previous_file(tmp_path, method):
    learn = Learner(None, build_model(tiny_cnn, n_out=3, widths=[4, 8]), path=tmp_path, progress=False)
    file = learn.save("m") if method.startswith("save") else learn.export("export.pth")
    before = file.read_bytes()
    out = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE.format(method=method), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert file.read_bytes() == before
    if method.startswith("export"): load_learner(file)
    else: learn.load("m")

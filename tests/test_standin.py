"""Offline stand-in weights: made once and cached (even with two processes asking at once), a damaged cache made again,
deterministic on one machine, and worth transferring: a frozen stand-in body reads the Pets twin better than a random one.
Every test works in a temporary data folder with a small training budget."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course.data.external import URLs, untar_data
from course.vision import weights


@pytest.fixture
def data(tmp_path, monkeypatch):
    "An empty course data folder, offline."
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    return tmp_path / "data"


def test_made_once_then_loaded(data):
    calls = []
    def train(): calls.append(1); return {"w": torch.arange(4.)}
    first = weights.cached_state("toy", 1, train)
    path = weights.standin_file("toy", 1)
    mtime = path.stat().st_mtime_ns
    second = weights.cached_state("toy", 1, train)
    assert len(calls) == 1 and path.stat().st_mtime_ns == mtime
    assert torch.equal(first["w"], second["w"]) and path.parent == data / "standin"
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x03\x04 truncated zip"])
def test_damaged_cache_is_made_again(data, capsys, content):
    path = weights.standin_file("toy", 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    state = weights.cached_state("toy", 1, lambda: {"w": torch.ones(2)})
    assert torch.equal(state["w"], torch.ones(2)) and "damaged" in capsys.readouterr().out
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


def test_a_file_that_is_not_a_state_dict_is_made_again(data, capsys):
    path = weights.standin_file("toy", 1)
    path.parent.mkdir(parents=True)
    torch.save([1, 2, 3], path)
    assert torch.equal(weights.cached_state("toy", 1, lambda: {"w": torch.zeros(1)})["w"], torch.zeros(1))
    assert "damaged" in capsys.readouterr().out


def test_names_stay_in_the_folder(data):
    for bad in ("../x", "a/b", "", ".x", "a..b", "x\\y"):
        with pytest.raises(ValueError): weights.standin_file(bad, 1)


_WORKER = """
import sys, time, torch
from course.pretrained import cached_state
def train():
    with open(sys.argv[1], "a") as f: f.write("trained\\n")
    time.sleep(1.5)  # long enough for the other process to arrive while this one trains
    return {"w": torch.arange(3.)}
print(cached_state("toy", 1, train)["w"].tolist())
"""


def test_two_processes_train_once(data, tmp_path):
    log = tmp_path / "log.txt"
    env = {**os.environ, "COURSE_DATA": str(data)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(log)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all(o.strip() == "[0.0, 1.0, 2.0]" for o in outs) and log.read_text() == "trained\n"


def test_pretraining_is_deterministic(data):
    torch.manual_seed(3); expected = torch.rand(2)
    torch.manual_seed(3)
    a = weights.pretrain_standin("resnet18", steps=3, size=32, n_classes=6, verbose=False)
    b = weights.pretrain_standin("resnet18", steps=3, size=32, n_classes=6, verbose=False)
    assert torch.equal(torch.rand(2), expected)  # the caller's random state is untouched
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = weights.pretrain_standin("resnet18", steps=3, size=32, n_classes=6, seed=1, verbose=False)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_pretrained_model_offline_uses_the_cached_standin(data, capsys):
    from torchvision.models import resnet18
    placed = resnet18(num_classes=100).state_dict()  # stands for a cached stand-in (its head has 100 outputs)
    path = weights.standin_file("resnet18", weights.STANDIN_VERSION)
    path.parent.mkdir(parents=True)
    torch.save(placed, path)
    model = weights.pretrained_model("resnet18")
    assert torch.equal(model.conv1.weight, placed["conv1.weight"]) and model.fc.out_features == 1000
    out = capsys.readouterr().out
    assert "stand-in" in out and "not on ImageNet" in out and "Pretraining" not in out


@torch.no_grad()
def _features(body, x):
    "Average-pooled features of a frozen body in eval mode, (N, C)."
    return body.eval()(x).mean((2, 3))


def _linear_probe_error(ftr, ytr, fva, yva, n_classes, steps=300):
    "Validation error of a linear classifier trained with full-batch Adam on standardised features."
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fva = (ftr - mean) / std, (fva - mean) / std
    torch.manual_seed(0)
    lin = torch.nn.Linear(ftr.shape[1], n_classes)
    opt = torch.optim.Adam(lin.parameters(), 1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad(); torch.nn.functional.cross_entropy(lin(ftr), ytr).backward(); opt.step()
    return (lin(fva).argmax(1) != yva).float().mean().item()


def test_standin_body_transfers_to_pets(data):
    "A frozen body pretrained on generated images (small budget) separates the Pets twin's breeds better than a random one."
    from PIL import Image
    from torchvision.models import resnet18
    from torchvision.transforms.v2.functional import pil_to_tensor, resize
    from course.vision.augment import IMAGENET_STATS
    files = sorted((untar_data(URLs.PETS) / "images").glob("*.jpg"))
    breeds = sorted({f.name.rsplit("_", 1)[0] for f in files})
    mean, std = (torch.tensor(s)[:, None, None] for s in IMAGENET_STATS)
    x = torch.stack([resize(pil_to_tensor(Image.open(f).convert("RGB")), [64, 64], antialias=True) for f in files]) / 255
    x, y = (x - mean) / std, torch.tensor([breeds.index(f.name.rsplit("_", 1)[0]) for f in files])
    valid = torch.arange(len(files)) % 4 == 0
    torch.manual_seed(0)
    random_body = torch.nn.Sequential(*list(resnet18().children())[:-2])
    standin = weights._load_body(resnet18(), weights.pretrain_standin("resnet18", steps=250, verbose=False))
    errors = {}
    for name, net in [("random", random_body), ("stand-in", torch.nn.Sequential(*list(standin.children())[:-2]))]:
        f = _features(net, x)
        errors[name] = _linear_probe_error(f[~valid], y[~valid], f[valid], y[valid], len(breeds))
    print(errors)
    assert errors["stand-in"] < errors["random"] - 0.1, errors

"""The pretrained language model's way in (course.text.weights): fast.ai's `wt103-fwd.tgz` format, built here from a small
model of the course's own, served by a loopback server through the registry, read without running anything, and mapped
onto the course's `LanguageModel` so that the loaded model gives the same outputs as the one that was saved."""
import dataclasses
import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import pytest
import torch

from course.data import external as datasets
from course.data.external import URLs
from course.text import weights
from course.text.models import LanguageModel
from course.pretrained import WeightsError

from test_downloads import Server, env, server  # noqa: F401  (fixtures: loopback server, fresh data folder, online)

SIZES = dict(emb_sz=16, n_hid=24, n_layers=3)
VOCAB = ["xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj", "the", "film", "was", "good", "bad",
         ".", ",", "a", "it"]


def small_model(seed=0) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(len(VOCAB), **SIZES).eval()


def wt103_archive(model, vocab=VOCAB, top="wt103-fwd", vocab_bytes=None, extra=None) -> bytes:
    "A .tgz laid out like fast.ai's wt103-fwd.tgz, holding `model` in fastai's names and `vocab` pickled."
    state = weights.course_to_wt103({k: v.clone() for k, v in model.state_dict().items()})
    if extra: state.update(extra)
    buf_w = io.BytesIO(); torch.save(state, buf_w)
    files = {"lstm_fwd.pth": buf_w.getvalue(), "itos_wt103.pkl": vocab_bytes or pickle.dumps(vocab)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(f"{top}/{name}"); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def online(env, server, monkeypatch):
    "Online mode with the loopback server standing in for fast.ai's model zoo, and small sizes for the learners."
    monkeypatch.setattr(weights, "WT103_SIZES", dict(SIZES))
    return server


def serve(server, data: bytes):
    server.routes["/fast-ai-modelzoo/wt103-fwd.tgz"] = ("file", data)


def test_file_format_round_trip_gives_identical_outputs(online):
    model = small_model()
    serve(online, wt103_archive(model))
    state, vocab = weights.pretrained_lm()
    assert vocab == VOCAB
    loaded = LanguageModel(len(vocab), **weights.lm_sizes()).eval()
    loaded.load_state_dict(state)
    x = torch.randint(2, len(VOCAB), (3, 11))
    with torch.no_grad():
        model.reset(); loaded.reset()
        a, b = model(x), loaded(x)
    a, b = (t[0] if isinstance(t, tuple) else t for t in (a, b))
    assert torch.equal(a, b)


def test_first_download_records_checksum_then_checks_it(online, capsys):
    serve(online, wt103_archive(small_model()))
    weights.pretrained_lm()
    assert "no published checksum" in capsys.readouterr().out
    recorded = datasets.recorded_checksum(URLs.WT103_FWD)
    assert recorded is not None and len(recorded["sha256"]) == 64
    # a later download of a different file is refused
    folder = datasets.data_dir() / "wt103-fwd"
    import shutil; shutil.rmtree(folder); (datasets.data_dir() / "archive" / "wt103-fwd.tgz").unlink()
    serve(online, wt103_archive(small_model(seed=1)))
    with pytest.raises(datasets.ChecksumError): weights.pretrained_lm()


def test_vocab_that_runs_code_is_refused(online, tmp_path):
    marker = tmp_path / "ran"
    class Evil:
        def __reduce__(self): return (os.system, (f"touch {marker}",))
    serve(online, wt103_archive(small_model(), vocab_bytes=pickle.dumps(VOCAB[:-1] + [Evil()])))
    with pytest.raises(WeightsError, match="nothing in it was run"): weights.pretrained_lm()
    assert not marker.exists()


def test_unknown_parameters_are_an_error(online):
    serve(online, wt103_archive(small_model(), extra={"2.head.weight": torch.zeros(2)}))
    with pytest.raises(WeightsError, match="2.head.weight"): weights.pretrained_lm()


def test_vocab_is_matched_row_by_row(online):
    model = small_model()
    serve(online, wt103_archive(model))
    new_vocab = ["xxunk", "xxpad", "it", "brandnew", "film"]
    state = weights.pretrained_lm_state(new_vocab)
    emb = model.state_dict()["encoder.embed.weight"]
    got = state["encoder.embed.weight"]
    assert got.shape == (5, SIZES["emb_sz"])
    assert torch.equal(got[2], emb[VOCAB.index("it")]) and torch.equal(got[4], emb[VOCAB.index("film")])
    assert torch.allclose(got[3], emb.mean(0))
    lm = LanguageModel(len(new_vocab), **weights.lm_sizes())
    lm.load_state_dict(state)  # fits the model the learners build


def test_offline_untar_of_model_explains(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    with pytest.raises(datasets.DownloadError, match="stand-in"): datasets.untar_data(URLs.WT103_FWD)


def test_standin_recipe_is_deterministic_and_learns(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    torch.manual_seed(3); before = torch.rand(2)
    torch.manual_seed(3)
    tiny = dict(emb_sz=16, n_hid=32, n_layers=2)
    a = weights.pretrain_lm_standin(epochs=1, sizes=tiny)
    assert torch.equal(torch.rand(2), before)  # the caller's random state is untouched
    out = capsys.readouterr().out
    acc = float(re.search(r"accuracy (\d\.\d+)", out).group(1))
    b = weights.pretrain_lm_standin(epochs=1, sizes=tiny)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    vocab = weights.standin_vocab()
    assert a["encoder.embed.weight"].shape == (len(vocab), 16)
    assert vocab[:2] == ["xxunk", "xxpad"] and "film" in vocab
    assert acc > 5 / len(vocab), (acc, len(vocab))  # far above guessing among the vocabulary, after one small epoch

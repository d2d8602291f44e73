"""Training under torchrun with DistributedDataParallel (`course.distributed`, chapter 19), on CPUs with gloo.

The tests that need processes run this file under `torchrun --nproc_per_node=2` (its `__main__` part is the script
each process runs), save what every process ends with, and compare it here with one process doing the same work.
Every launch is bounded by a timeout, after which the whole process tree is killed: a hang fails the test.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course.callback.core import Callback, EarlyStopping, GradientClip
from course.data.core import DataLoaders, TensorLoader
from course.distributed import distributed, is_main, rank, shard_loader, set_epoch
from course.export import build_model, load_learner
from course.learner import Learner
from course.metrics import accuracy, Metric
from course.utils import set_seed

HERE = Path(__file__).resolve()
N_TRAIN, N_VALID, BS = 96, 42, 16  # BS: the whole batch; each of two processes takes half


# ---- the work, the same for one process and for two ----
def data(kind, bs, dtype=torch.float64):
    "Inputs (N, 6) and targets (N,): TensorLoaders (the tabular way) or loaders over datasets (TfmdDL)."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VALID, 6, generator=g, dtype=torch.float64)
    y = (x[:, :3] + 0.3 * torch.randn(len(x), 3, generator=g, dtype=torch.float64)).argmax(1)
    x = x.to(dtype)
    tr, va = (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])
    if kind == "tensors": return SimpleNamespace(train=TensorLoader(*tr, bs=bs, shuffle=True), valid=TensorLoader(*va, bs=bs))
    return DataLoaders.from_dsets(TensorDataset(*tr), TensorDataset(*va), bs=bs, device="cpu")


class WorstRecall(Metric):
    "The recall of the worst-served class: a whole-set metric, not an average over batches."
    name = "worst_recall"
    def reset(self): self.preds, self.targs = [], []
    def accumulate(self, pred, targ): self.preds.append(pred.argmax(1)); self.targs.append(targ)
    @property
    def value(self):
        p, t = torch.cat(self.preds), torch.cat(self.targs)
        return min(((p == c) & (t == c)).sum().item() / max((t == c).sum().item(), 1) for c in range(3))


def train(kind, bs):
    "Train a float64 model without batch norm for two one-cycle epochs (12 steps), clipped; then an LR finder run."
    set_seed(0)
    model = build_model(nn.Linear, in_features=6, out_features=3).double()  # describable: export can rebuild it
    learn = Learner(data(kind, bs), model, metrics=[accuracy, WorstRecall()], cbs=[GradientClip(0.05)], device="cpu")
    learn.to_distributed()
    learn.fit_one_cycle(2, 0.1)
    suggested = learn.lr_find(num_it=12, show_plot=False)
    return learn, suggested


def record(learn, suggested):
    rows = [{k: v for k, v in row.items() if k != "time"} for row in learn.recorder.history]
    return {"weights": {k: v.clone() for k, v in learn.model.state_dict().items()}, "history": rows,
            "losses": learn.recorder.losses, "valid": learn.validate(), "suggested": tuple(suggested),
            "finder": learn.lr_finder.losses, "model_type": type(learn.model).__name__}


def early_stopped(bs):
    "Fit for up to 8 epochs with EarlyStopping at a rate that overshoots, so it stops early; every rank must stop together."
    set_seed(0)
    learn = Learner(data("tensors", bs), nn.Linear(6, 3).double(), cbs=[EarlyStopping(patience=1)], device="cpu")
    learn.to_distributed()
    learn.fit(8, 3.0)
    return [{k: v for k, v in row.items() if k != "time"} for row in learn.recorder.history]


# ---- what each process runs under torchrun ----
def worker_train(out):
    with distributed():
        for kind in ("tensors", "datasets"):
            learn, suggested = train(kind, BS // 2)
            torch.save(record(learn, suggested), out / f"{kind}_rank{rank()}.pt")
            if is_main(): learn.export(out / f"{kind}_export.pth")
        # Mixed precision (bfloat16 on CPUs) with clipping: in float32, so only the ranks are compared with each other.
        set_seed(0)
        learn = Learner(data("datasets", BS // 2, torch.float32), nn.Linear(6, 3), mixed_precision="bf16",
                        cbs=[GradientClip(0.05)], metrics=accuracy, device="cpu").to_distributed()
        learn.fit_one_cycle(1, 0.1)
        torch.save({"weights": learn.model.state_dict(), "history": [{k: v for k, v in row.items() if k != "time"}
                    for row in learn.recorder.history], "pred_dtype": str(learn.pred.dtype)}, out / f"amp_rank{rank()}.pt")
        torch.save({"history": early_stopped(BS // 2)}, out / f"early_rank{rank()}.pt")


class FailOnRank1(Callback):
    def after_backward(self):
        if rank() == 1 and self.learn.iter == 2: raise ValueError("rank 1 stops here on purpose")


def worker_fail(out):
    (out / f"pid{os.environ['RANK']}").write_text(str(os.getpid()))
    with distributed():
        learn = Learner(data("tensors", BS // 2), nn.Linear(6, 3).double(), cbs=[FailOnRank1()], device="cpu")
        learn.to_distributed()
        learn.fit(3, 0.1)


WORKERS = {"train": worker_train, "fail": worker_fail}


# ---- launching ----
def torchrun(tmp_path, scenario, timeout=240, redirect=True):
    "Run this file's `scenario` in two processes; kill the whole process tree if it takes longer than `timeout`."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    if redirect: cmd += ["--redirects", "3", "--log-dir", str(tmp_path / "logs")]  # each process's output in its own file
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COURSE_DEVICE": "cpu", "PYTHONPATH": str(HERE.parents[1])}
    proc = subprocess.Popen(cmd + [str(HERE), scenario, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    try: out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL); proc.communicate()
        pytest.fail(f"torchrun {scenario} did not finish within {timeout} s: a hang")
    return proc.returncode, out, err


def rank_output(tmp_path, rank_, stream="stdout"):
    files = list((tmp_path / "logs").rglob(f"attempt_0/{rank_}/{stream}.log"))
    assert len(files) == 1, files
    return files[0].read_text()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    code, out, err = torchrun(tmp, "train")
    assert code == 0, f"torchrun failed:\n{out}\n{err}\n" + "".join(
        rank_output(tmp, r, s) for r in (0, 1) for s in ("stdout", "stderr"))
    return tmp


@pytest.fixture(scope="module")
def one_process():
    return {kind: record(*train(kind, BS)) for kind in ("tensors", "datasets")}


KINDS = ["tensors", "datasets"]


@pytest.mark.parametrize("kind", KINDS)
def test_two_half_batches_give_the_weights_of_one_whole_batch(two_processes, one_process, kind):
    ranks = [torch.load(two_processes / f"{kind}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    ref = one_process[kind]
    assert ranks[0]["model_type"] == "Linear"  # unwrapped after fit
    for k, w in ref["weights"].items():
        assert torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]), k  # DDP: every copy takes the same step
        assert torch.allclose(ranks[0]["weights"][k], w, rtol=0, atol=1e-10), (k, (ranks[0]["weights"][k] - w).abs().max())
    assert not torch.allclose(ref["weights"]["weight"], build_model(nn.Linear, in_features=6, out_features=3).weight.double())


@pytest.mark.parametrize("kind", KINDS)
def test_every_rank_reports_the_single_process_numbers(two_processes, one_process, kind):
    ranks = [torch.load(two_processes / f"{kind}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    ref = one_process[kind]
    for key in ("history", "losses", "valid", "suggested", "finder"):
        assert ranks[0][key] == ranks[1][key], key  # exactly the same numbers in both processes
    assert len(ref["history"]) == 2 and len(ref["losses"]) == 12
    assert ranks[0]["history"][-1].keys() == ref["history"][-1].keys()
    for got, want in zip(ranks[0]["history"], ref["history"]):
        for k in want: assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (k, got[k], want[k])
    assert ranks[0]["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert ranks[0]["valid"] == pytest.approx(ref["valid"], rel=1e-5)
    assert ranks[0]["finder"] == pytest.approx(ref["finder"], rel=1e-5)
    assert ranks[0]["suggested"] == pytest.approx(ref["suggested"], rel=1e-6)
    assert 0.5 < ref["history"][-1]["accuracy"] <= 1  # it learned: three classes, a third by chance


def test_rank_1_prints_nothing_and_rank_0_prints_the_table(two_processes):
    assert rank_output(two_processes, 1) == ""
    table = rank_output(two_processes, 0)
    assert "2 processes x 8 items = batches of 16 items per step" in table
    assert table.count("train_loss") == 4 and "worst_recall" in table  # one table for each fit


def test_mixed_precision_keeps_the_ranks_in_step(two_processes):
    ranks = [torch.load(two_processes / f"amp_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["pred_dtype"] == "torch.bfloat16" and ranks[0]["history"] == ranks[1]["history"]
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])


def test_early_stopping_stops_every_rank_at_the_epoch_one_process_stops(two_processes):
    ranks = [torch.load(two_processes / f"early_rank{r}.pt", weights_only=True)["history"] for r in (0, 1)]
    assert ranks[0] == ranks[1]  # decided on the validation loss of all processes, not each one's own share
    ref = early_stopped(BS)
    assert len(ranks[0]) == len(ref) < 8
    assert all(abs(a["valid_loss"] - b["valid_loss"]) <= 1e-6 * abs(b["valid_loss"]) for a, b in zip(ranks[0], ref))


def test_rank_0_exports_the_model_itself(two_processes, one_process):
    for kind in KINDS:
        learn = load_learner(two_processes / f"{kind}_export.pth")
        got = torch.load(two_processes / f"{kind}_rank0.pt", weights_only=True)["weights"]
        assert torch.allclose(learn.model.weight.double(), got["weight"])
        assert not (two_processes / f"{kind}_export.pth.tmp").exists()


def test_a_failure_in_one_rank_ends_both_with_the_error_shown(tmp_path):
    code, out, err = torchrun(tmp_path, "fail", timeout=120, redirect=False)
    assert code != 0
    assert "rank 1 stops here on purpose" in err, err[-3000:]
    for r in (0, 1):  # neither process is left behind
        pid = int((tmp_path / f"pid{r}").read_text())
        with pytest.raises(ProcessLookupError): os.kill(pid, 0)


# ---- sharding, in this process ----
def ids_of(dl): return [int(i) for b in dl for i in b[0].flatten()]


def loaders(n, bs, shuffle):
    ids = torch.arange(n)
    return {"tensors": TensorLoader(ids, ids, bs=bs, shuffle=shuffle),
            "datasets": DataLoaders.from_dsets(TensorDataset(ids, ids), TensorDataset(ids, ids), bs=bs, shuffle=shuffle,
                                               device="cpu").train,
            "wrapped": DataLoaders(TensorLoader(ids, ids, bs=bs, shuffle=shuffle), device="cpu").train,
            "torch": DataLoader(TensorDataset(ids, ids), batch_size=bs, shuffle=shuffle)}


@pytest.mark.parametrize("kind", ["tensors", "datasets", "torch", "wrapped"])
def test_training_shards_are_equal_in_size_cover_every_item_and_reshuffle(kind):
    dl = loaders(11, 2, shuffle=True)[kind]
    shards = [shard_loader(dl, r, 3, training=True) for r in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]  # ceil(11 / 3) = 4 items each, one reused
    seen = [ids_of(s) for s in shards]
    assert set(sum(seen, [])) == set(range(11)) and all(len(s) == 4 for s in seen)
    for s in shards: set_epoch(s, 1)
    again = [ids_of(s) for s in shards]
    assert again != seen and set(sum(again, [])) == set(range(11))
    assert again == [ids_of(s) for s in shards]  # the same epoch, the same order


@pytest.mark.parametrize("kind", ["tensors", "datasets", "torch", "wrapped"])
def test_validation_shards_count_every_item_once(kind):
    dl = loaders(11, 2, shuffle=False)[kind]
    seen = [ids_of(shard_loader(dl, r, 3, training=False)) for r in range(3)]
    assert sorted(sum(seen, [])) == list(range(11)) and seen[0] == [0, 3, 6, 9]


def test_unshardable_loaders_are_refused_with_advice():
    with pytest.raises(TypeError, match="build the loaders from datasets"): shard_loader([(torch.zeros(2), torch.zeros(2))], 0, 2)
    with pytest.raises(ValueError, match="each needs at least one"): shard_loader(TensorLoader(torch.zeros(1)), 0, 2)


if __name__ == "__main__":  # under torchrun: python tests/test_distributed.py SCENARIO OUT_DIR
    from torch.distributed.elastic.multiprocessing.errors import record as record_errors
    record_errors(WORKERS[sys.argv[1]])(Path(sys.argv[2]))

"""How fast are the tabular loader and `tabular_learner`, against hand-written code doing the same work?

Three ratios, each measured in one run (best of several runs, the contenders interleaved so a busy machine slows
them alike), on a table shaped like the Bulldozers data the chapter uses (course.tabular, chapter 9): 8 categorical
columns, 3 continuous, a float target; random values, since speed does not depend on them.

    loader: TensorLoader / hand slicing           rows/s ratio (goal >= 0.9)
    loader: TensorLoader / DataLoader(row by row)  rows/s ratio (torch's Dataset + default collate, row by row)
    epoch:  tabular_learner / hand loop           time ratio  (goal <= 1.05; both end with identical weights)

The hand loader shuffles the same tensors with one permutation per epoch and cuts batches by slicing; the row-by-row
loader is `DataLoader(TensorDataset(...), batch_size=bs, shuffle=True)`. The hand loop trains the same `TabularModel`
(same initial weights) with the same optimizer (the Learner's fused AdamW) on the same batches in the same order.

    python bench/tabular.py                  # CPU, one thread
    python bench/tabular.py --device cuda    # on a GPU server
"""
import argparse
import contextlib
import io
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from course.data.core import TensorLoader
from course.optim import fast_adamw
from course.tabular.core import Categorify, FillMissing, Standardize, TabularData
from course.tabular.data import TabularDataLoaders
from course.tabular.learner import tabular_learner

LR, WD = 1e-2, 0.01


def make_dls(n, bs, device, seed=0):
    "TabularDataLoaders over a random table shaped like the chapter's Bulldozers columns."
    rng = np.random.default_rng(seed)
    cards = [35, 116, 7, 7, 4, 121, 2, 2]
    df = pd.DataFrame({f"c{i}": rng.integers(0, k, n).astype(str) for i, k in enumerate(cards)}
                      | {f"x{i}": rng.normal(size=n) for i in range(3)} | {"y": rng.normal(10, 0.6, n)})
    tab = TabularData(df, [FillMissing(), Categorify(), Standardize()], [f"c{i}" for i in range(8)],
                      [f"x{i}" for i in range(3)], "y", (np.arange(int(n * 0.95)), np.arange(int(n * 0.95), n)))
    return TabularDataLoaders(tab, bs=bs, device=device)


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def timed(run, device):
    with contextlib.redirect_stdout(io.StringIO()):
        sync(device); start = time.perf_counter()
        run()
        sync(device)
        return time.perf_counter() - start


def hand_slices(tensors, bs):
    "The loader you would write by hand: one permutation per epoch, batches by slicing."
    perm = torch.randperm(len(tensors[0]), device=tensors[0].device)
    ts = [t[perm] for t in tensors]
    for i in range(0, len(ts[0]) - bs + 1, bs):  # full batches only, as the training loader
        yield tuple(t[i:i + bs] for t in ts)


def one_pass(batches):
    n = 0
    for b in batches: n += len(b[0])
    return n


def hand_loop(model, train, valid, device):
    "One training pass, then the validation loss, written by hand."
    opt = fast_adamw(model.parameters(), lr=LR, weight_decay=WD)
    model.train()
    for cats, conts, y in train:
        loss = F.mse_loss(model(cats, conts), y)
        loss.backward(); opt.step(); opt.zero_grad()
    model.eval()
    with torch.no_grad():
        total = sum(F.mse_loss(model(c, x), t, reduction="sum") for c, x, t in valid)
    print(float(total))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--bs", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (0: torch's default)")
    args = parser.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dls = make_dls(args.rows, args.bs, device)
    tensors = [t.to(device) for t in dls.train.tensors]
    ours = TensorLoader(*tensors, n_inp=2, bs=args.bs, shuffle=True, drop_last=True)
    rows = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*[t.cpu() for t in tensors]), batch_size=args.bs,
                                       shuffle=True, drop_last=True)
    n = one_pass(ours)
    assert n == one_pass(hand_slices(tensors, args.bs)) == one_pass(rows)
    t_ours, t_hand, t_rows = [], [], []
    for run in range(args.runs):
        t_ours.append(timed(lambda: one_pass(ours), device))
        t_hand.append(timed(lambda: one_pass(hand_slices(tensors, args.bs)), device))
        if run < max(1, args.runs // 2): t_rows.append(timed(lambda: one_pass(rows), device))
    print(f"loader: TensorLoader / hand slicing {min(t_hand) / min(t_ours):.2f} (rows/s ratio; "
          f"{n / min(t_ours):,.0f} rows/s against {n / min(t_hand):,.0f})", flush=True)
    print(f"loader: TensorLoader / DataLoader(row by row) {min(t_rows) / min(t_ours):.1f} (rows/s ratio; "
          f"row by row {n / min(t_rows):,.0f} rows/s)", flush=True)

    def fresh():
        torch.manual_seed(0)
        return tabular_learner(dls, layers=[200, 100], y_range=(7.0, 13.0), wd=WD, lr=LR, progress=False)

    def run_learner():
        learn = fresh(); torch.manual_seed(1)
        return timed(lambda: learn.fit(1), device), learn.model

    def run_hand():
        model = fresh().model; torch.manual_seed(1)
        return timed(lambda: hand_loop(model, dls.train, dls.valid, device), device), model

    run_hand(); run_learner()  # warm-up
    hand, learner = [], []
    for run in range(args.runs):
        for which in ((0, 1) if run % 2 == 0 else (1, 0)):
            if which == 0: t, hand_model = run_hand(); hand.append(t)
            else: t, learn_model = run_learner(); learner.append(t)
    if not all(torch.equal(a, b) for a, b in zip(hand_model.state_dict().values(), learn_model.state_dict().values())):
        raise SystemExit("the two loops ended with different weights: not the same work")
    print(f"epoch: tabular_learner / hand loop {min(learner) / min(hand):.2f} (time ratio; learner "
          f"{min(learner) * 1000:.0f} ms, hand {min(hand) * 1000:.0f} ms per epoch of {len(dls.train)} + {len(dls.valid)} batches)")


if __name__ == "__main__":
    main()

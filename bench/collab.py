"""Does `collab_learner` cost anything beyond the work of training a recommendation model?

Times one epoch (a training pass, then a validation pass) of `collab_learner` (course.collab, chapter 8) against
a hand-written PyTorch loop doing the same work: the same `DotProductBias` model and initial weights, the same
optimizer (AdamW with weight decay 0.1, the Learner's fused `fast_adamw`), the same `TensorLoader` batches in the
same shuffled order, on ratings shaped like MovieLens 100k (943 users, 1,682 films, 100,000 ratings; random, since
the loop's speed does not depend on their values). Prints, per batch size,

    bs=64: learner/hand ratio 0.98   (...)

(Learner time / hand-loop time, best of several runs each, the two interleaved so a busy machine slows both alike).
The goal is at most 1.05. Both loops must end with identical weights: the script checks it.

It also prints the trap the chapter's loader avoids: the hand loop fed by PyTorch's `DataLoader` over a
`TensorDataset`, which fetches and stacks rows one at a time, against the same loop fed by `TensorLoader`,
which cuts each batch as a slice of tensors shuffled once per epoch:

    bs=1024: row-by-row DataLoader / TensorLoader 11.9

(figures from one CPU run; the gap grows with the batch size, and on a GPU, where the model's step is cheap).

    python bench/collab.py                 # CPU, one thread
    python bench/collab.py --runs 11       # more runs, steadier figures on a busy machine
    python bench/collab.py --device cuda   # on a GPU server
"""
import argparse
import contextlib
import io
import time

import torch
import torch.nn.functional as F

from course.collab import CollabDataLoaders, collab_learner
from course.optim import fast_adamw

N_USERS, N_ITEMS, N_RATINGS, WD, LR = 943, 1682, 100_000, 0.1, 5e-3


def make_dls(bs, device, seed=0):
    "CollabDataLoaders over random (user, item, rating) triples shaped like MovieLens 100k."
    import pandas as pd
    g = torch.Generator().manual_seed(seed)
    df = pd.DataFrame({"user": torch.randint(1, N_USERS + 1, (N_RATINGS,), generator=g).numpy(),
                       "item": torch.randint(1, N_ITEMS + 1, (N_RATINGS,), generator=g).numpy(),
                       "rating": torch.randint(1, 6, (N_RATINGS,), generator=g).float().numpy()})
    return CollabDataLoaders.from_df(df, bs=bs, seed=seed, device=device)


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def hand_loop(model, train, valid, device):
    "The loop you would write by hand: one training pass, then the validation loss."
    opt = fast_adamw(model.parameters(), lr=LR, weight_decay=WD)
    model.train()
    total, n = torch.zeros((), device=device), 0
    for users, items, y in train:
        users, items, y = users.to(device), items.to(device), y.to(device)  # no-ops when already there
        loss = F.mse_loss(model(users, items), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        total += loss.detach() * len(y); n += len(y)
    model.eval()
    valid_loss, m = torch.zeros((), device=device), 0
    with torch.no_grad():
        for users, items, y in valid:
            users, items, y = users.to(device), items.to(device), y.to(device)
            valid_loss += F.mse_loss(model(users, items), y) * len(y); m += len(y)
    print((total / n).item(), (valid_loss / m).item())


def timed(run, device):
    "Wall time of `run()`, its printed output swallowed."
    with contextlib.redirect_stdout(io.StringIO()):
        sync(device); start = time.perf_counter()
        run()
        sync(device)
        return time.perf_counter() - start


def fresh_learner(dls, seed=0):
    torch.manual_seed(seed)
    return collab_learner(dls, n_factors=50, wd=WD, lr=LR)


def time_learner(dls):
    learn = fresh_learner(dls)
    torch.manual_seed(1)  # the shuffle of the epoch
    return timed(lambda: learn.fit(1), dls.device), learn.model


def time_hand(dls, train=None):
    model = fresh_learner(dls).model  # the same model with the same initial weights, trained by hand
    torch.manual_seed(1)
    return timed(lambda: hand_loop(model, train or dls.train, dls.valid, dls.device), dls.device), model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each loop per case; the best is kept")
    parser.add_argument("--bs", default="64,1024")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (0: torch's default)")
    args = parser.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for bs in [int(b) for b in args.bs.split(",")]:
        dls = make_dls(bs, device)
        time_hand(dls); time_learner(dls)  # warm-up
        hand, learner = [], []
        for run in range(args.runs):
            for which in ((0, 1) if run % 2 == 0 else (1, 0)):  # alternate which goes first
                if which == 0: t, hand_model = time_hand(dls); hand.append(t)
                else: t, learn_model = time_learner(dls); learner.append(t)
        same = all(torch.equal(a, b) for a, b in zip(hand_model.parameters(), learn_model.parameters()))
        if not same: raise SystemExit(f"bs={bs}: the two loops ended with different weights; not the same work")
        paired = sorted(l / h for l, h in zip(learner, hand))
        print(f"bs={bs}: learner/hand ratio {min(learner) / min(hand):.2f}   (median of paired runs "
              f"{paired[len(paired) // 2]:.2f}; learner {min(learner) * 1000:.0f} ms, hand loop {min(hand) * 1000:.0f} ms "
              f"per epoch of {len(dls.train)} + {len(dls.valid)} batches; best of {args.runs})", flush=True)
        # The trap: the same hand loop, fed row by row by torch's DataLoader.
        users, items, y = dls.train.tensors
        rows = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(users, items, y), batch_size=bs, shuffle=True)
        slow = min(time_hand(dls, rows)[0] for _ in range(max(1, args.runs // 3)))
        print(f"bs={bs}: row-by-row DataLoader / TensorLoader {slow / min(hand):.1f}   "
              f"(hand loop fed by DataLoader(TensorDataset) {slow * 1000:.0f} ms per epoch)", flush=True)


if __name__ == "__main__":
    main()

"""How much does the Learner's training loop cost on top of the work itself?

Times `Learner.fit` (with its default callbacks: Recorder, progress display, an accuracy metric) against a
hand-written PyTorch loop doing the same work: same model and initial weights, same optimizer (the Learner's
default, torch's AdamW with its fused kernel), same batches in the same order, a training pass then a
validation pass (loss and accuracy) per epoch. Small models and small batches make the loop's own overhead
show. Prints one line per case, e.g. `mlp bs=16: ratio 1.03` (Learner time / hand-loop time, best of
several runs each, the two interleaved so that a busy machine slows both alike), then the median of the
per-run ratios, the ratio of CPU times, and the difference per batch in microseconds. On a machine shared
with other work the figures move by several percent from run to run: run more (`--runs`) and compare.

    python bench/loop_overhead.py              # all cases
    python bench/loop_overhead.py --runs 31    # more runs, steadier figures on a busy machine

Both loops must end with identical weights: the script checks that, so the comparison is like for like.
"""
import argparse
import contextlib
import io
import time

import torch
import torch.nn.functional as F
from torch import nn

from course.learner import Learner
from course.metrics import accuracy
from course.optim import fast_adamw


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),     # (B, 8, 8, 8)
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),    # (B, 16, 4, 4)
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


CASES = {"mlp": (mlp, (784,), 8192), "cnn": (cnn, (3, 16, 16), 4096)}  # factory, item shape, training items


def make_batches(shape, n_train, bs, seed=0):
    "Lists of (x, y) batches, made once: both loops read exactly the same tensors in the same order."
    g = torch.Generator().manual_seed(seed)
    n_valid = n_train // 8
    x = torch.randn(n_train + n_valid, *shape, generator=g)
    y = (x.flatten(1)[:, :10] * 3).argmax(1)  # a learnable target: the largest of the first ten inputs
    batches = lambda xs, ys: [(xs[i:i + bs], ys[i:i + bs]) for i in range(0, len(xs), bs)]
    return batches(x[:n_train], y[:n_train]), batches(x[n_train:], y[n_train:])


class Batches:
    "The two lists of batches, shaped like DataLoaders (`.train`, `.valid`)."
    def __init__(self, train, valid): self.train, self.valid = train, valid


def hand_loop(model, train, valid, epochs, lr):
    "The loop you would write by hand: train, then measure validation loss and accuracy, each epoch."
    opt = fast_adamw(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            total += loss.item() * len(y); n += len(y)
        model.eval()
        valid_loss, correct, m = 0.0, 0, 0
        with torch.no_grad():
            for x, y in valid:
                out = model(x)
                valid_loss += F.cross_entropy(out, y).item() * len(y)
                correct += (out.argmax(1) == y).sum().item(); m += len(y)
        print(epoch, total / n, valid_loss / m, correct / m)


def fresh_model(factory, seed=0):
    torch.manual_seed(seed)
    return factory()


def timed(run):
    "Wall time and CPU time (this process) of `run()`, its printed output swallowed."
    with contextlib.redirect_stdout(io.StringIO()):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - wall, time.process_time() - cpu


def time_hand(factory, train, valid, epochs, lr):
    model = fresh_model(factory)
    return timed(lambda: hand_loop(model, train, valid, epochs, lr)), model


def time_learner(factory, train, valid, epochs, lr):
    learn = Learner(Batches(train, valid), fresh_model(factory), lr=lr, metrics=accuracy, device="cpu")
    return timed(lambda: learn.fit(epochs)), learn.model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each loop per case; the best is kept")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); 1 keeps figures steady on a shared machine")
    parser.add_argument("--cases", default="mlp,cnn")
    parser.add_argument("--bs", default="16,64,256")
    args = parser.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    lr = 1e-3
    for name in args.cases.split(","):
        factory, shape, n_train = CASES[name]
        for bs in [int(b) for b in args.bs.split(",")]:
            train, valid = make_batches(shape, n_train, bs)
            time_hand(factory, train, valid, 1, lr); time_learner(factory, train, valid, 1, lr)  # warm-up
            hand, learner = [], []
            for run in range(args.runs):
                # Alternate which loop goes first, so that a slow spell on a shared machine hits both alike.
                for which in ((0, 1) if run % 2 == 0 else (1, 0)):
                    if which == 0: t, hand_model = time_hand(factory, train, valid, args.epochs, lr); hand.append(t)
                    else: t, learn_model = time_learner(factory, train, valid, args.epochs, lr); learner.append(t)
            same = all(torch.equal(a, b) for a, b in zip(hand_model.parameters(), learn_model.parameters()))
            if not same: raise SystemExit(f"{name} bs={bs}: the two loops ended with different weights; not the same work")
            (hand_wall, hand_cpu), (learn_wall, learn_cpu) = [[min(t[i] for t in ts) for i in (0, 1)] for ts in (hand, learner)]
            n_batches = (len(train) + len(valid)) * args.epochs
            paired = sorted(l[0] / h[0] for l, h in zip(learner, hand))
            print(f"{name} bs={bs}: ratio {learn_wall / hand_wall:.2f}   (median of paired runs {paired[len(paired) // 2]:.2f}; "
                  f"cpu-time ratio {learn_cpu / hand_cpu:.2f}; "
                  f"learner {learn_wall * 1000:.0f} ms, hand loop {hand_wall * 1000:.0f} ms; "
                  f"{(learn_wall - hand_wall) / n_batches * 1e6:+.1f} µs per batch over {n_batches} batches; best of {args.runs})",
                  flush=True)


if __name__ == "__main__":
    main()

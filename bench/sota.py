"""What do chapter 7's training tricks cost? Mixup's callback per training epoch, and test-time augmentation.

Mixup: one training epoch of `Learner.fit` with the `Mixup` callback against the same epoch without it: same
model and initial weights, same batches (in memory, so that loading costs nothing and the callback's own work
shows), interleaved runs, best of several each. The callback blends each batch with a shuffled copy of
itself and computes the loss a second time; the target is at most 3 % more than the plain epoch.

TTA: `learn.tta(n)` against one plain prediction pass `learn.get_preds()` over the same validation
loader (a DataBlock-style pipeline: bytes per item, then IntToFloat, the batch augmentation and Normalize
on the batch). TTA runs the plain pass and n augmented ones, so the expected ratio is about n + 1; the
script prints the ratio and the ratio divided by n + 1 (above 1: an augmented pass costs more than a
plain one, since it resamples every image).

    python bench/sota.py                    # both, CPU, a small xresnet18 at 64 px
    python bench/sota.py --device cuda      # on a GPU server
    python bench/sota.py --runs 15          # more runs, steadier figures on a busy machine

Ratios are measured in one process, the two sides interleaved so that a busy machine slows both alike.
"""
import argparse
import contextlib
import io
import time

import torch

from course.callback.mixup import Mixup
from course.data.core import Datasets, IntToFloat, TensorImage
from course.learner import Learner
from course.utils import set_seed
from course.vision.augment import aug_transforms, Normalize
import course.vision.learner  # noqa: F401  (attaches Learner.tta)
from course.vision.models.xresnet import xresnet18


def model(n_out=10):
    "A small xresnet18 (a quarter of the usual widths), the kind of model chapter 7 trains on a CPU."
    return xresnet18(n_out=n_out, widths=(16, 32, 64, 128))


class Batches:
    "Two lists of batches, shaped like DataLoaders (`.train`, `.valid`)."
    def __init__(self, train, valid): self.train, self.valid = train, valid


def quiet(run):
    "Wall time of `run()`, its printed output swallowed."
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def bench_mixup(args, device):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(args.items, 3, args.size, args.size, generator=g), torch.randint(0, 10, (args.items,), generator=g)
    train = [(x[i:i + args.bs].to(device), y[i:i + args.bs].to(device)) for i in range(0, len(x), args.bs)]
    valid = train[:2]

    def one_epoch(with_mixup):
        set_seed(0)
        learn = Learner(Batches(train, valid), model(), metrics=None, device=device, progress=False,
                        cbs=[Mixup()] if with_mixup else None)
        def run():
            learn.fit(1)
            sync(device)
        return quiet(run)

    one_epoch(False); one_epoch(True)  # warm-up
    plain, mixed = [], []
    for _ in range(args.runs):
        plain.append(one_epoch(False)); mixed.append(one_epoch(True))
    ratio = min(mixed) / min(plain)
    print(f"Mixup, {len(train)} batches of {args.bs} at {args.size} px: epoch {min(plain):.3f} s -> {min(mixed):.3f} s with "
          f"Mixup, ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f} %; target at most +3 %)")


def bench_tta(args, device):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (args.items, 3, 2 * args.size, 2 * args.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.items,), generator=g)
    split = args.items // 2
    dsets = Datasets(list(range(args.items)), [[lambda i: TensorImage(pixels[i])], [lambda i: labels[i]]],
                     splits=(list(range(split)), list(range(split, args.items))))
    dls = dsets.dataloaders(bs=args.bs, device=device,
                            after_batch=[IntToFloat(), *aug_transforms(size=args.size), Normalize()])
    set_seed(0)
    learn = Learner(dls, model(), device=device, progress=False)

    def run(f):
        def go():
            f()
            sync(device)
        return quiet(go)

    run(learn.get_preds); run(lambda: learn.tta(n=args.n))  # warm-up
    plain, aug = [], []
    for _ in range(args.runs):
        plain.append(run(learn.get_preds)); aug.append(run(lambda: learn.tta(n=args.n)))
    ratio = min(aug) / min(plain)
    print(f"TTA n={args.n}, {len(dls.valid)} batches of {args.bs} at {args.size} px: plain pass {min(plain):.3f} s, "
          f"tta {min(aug):.3f} s, ratio {ratio:.2f} (n + 1 = {args.n + 1}; per pass {ratio / (args.n + 1):.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each side; the best is kept")
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--n", type=int, default=4, help="augmented passes of TTA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); 1 keeps figures steady on a shared machine")
    args = parser.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bench_mixup(args, device)
    bench_tta(args, device)


if __name__ == "__main__":
    main()

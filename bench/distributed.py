"""What do more processes buy? Training throughput under torchrun with DistributedDataParallel (course.distributed).

CPU (always): the same total work (the same global batch, the same number of optimizer steps, a small CNN on
32 px images) done by 1 process and by 2 processes under `torchrun --standalone`, each process taking its
share of every batch, with gloo. Prints items/second for each and `2 processes / 1 process`. On a machine with
2 cores (shared with other work) expect little gain: each process also pays for its own copy of the
optimizer step and for the gradient all-reduce.

GPU (when CUDA is available, or with --gpu): one GPU, the Learner under `to_distributed()` with mixed
precision (float16, gradient scaling) and channels-last, against a hand-written PyTorch loop doing the same
(same model, weights, optimizer, batches, autocast, GradScaler, channels-last, a validation pass per epoch).
Prints images/second for each and `learner / raw loop`; the goal is at least 0.95.

    python bench/distributed.py                      # CPU: 1 against 2 processes
    python bench/distributed.py --rounds 5           # steadier on a busy machine
    python bench/distributed.py --gpu --size 128 --bs 128   # on a GPU server (runs by itself when CUDA is there)

Timings are the best of `--rounds` runs, the two cases alternating so that a busy spell slows both alike.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from course.data.core import TensorLoader
from course.distributed import distributed, is_main, rank
from course.layers import tiny_cnn
from course.learner import Learner
from course.optim import fast_adamw
from course.vision.models.xresnet import xresnet18


def synthetic(n, size, seed=0, device="cpu"):
    "n images (n, 3, size, size) and labels (n,) of 10 learnable classes: the class shifts a channel's mean."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) + (y % 3 == torch.arange(3)[:, None]).T[:, :, None, None] * (y[:, None, None, None] / 5)
    return x.to(device), y.to(device)


class Batches:
    "A training and a validation loader, shaped like DataLoaders (`.train`, `.valid`)."
    def __init__(self, train, valid): self.train, self.valid = train, valid


# ---- CPU: one worker process of a torchrun run ----
def cpu_worker(args, out):
    with distributed() as device:
        torch.set_num_threads(1)
        x, y = synthetic(args.items + args.items // 8, 32)
        n = args.items
        per_process = args.bs // int(os.environ.get("WORLD_SIZE", 1))
        dls = Batches(TensorLoader(x[:n], y[:n], bs=per_process, shuffle=True), TensorLoader(x[n:], y[n:], bs=per_process))
        torch.manual_seed(0)
        learn = Learner(dls, tiny_cnn(), lr=1e-3, device=device, progress=False).to_distributed()
        learn.fit(1)  # warm-up: the first steps allocate, DDP builds its buckets
        times = []
        for _ in range(args.epochs):
            torch.distributed.barrier() if torch.distributed.is_initialized() else None
            start = time.perf_counter(); learn.fit(1); times.append(time.perf_counter() - start)
        if is_main(): out.write_text(json.dumps({"seconds": min(times), "items": n}))


def torchrun_case(nproc, args):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
               "--cpu-worker", str(out), "--items", str(args.items), "--bs", str(args.bs), "--epochs", str(args.epochs)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COURSE_DEVICE": "cpu"}
        run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if run.returncode != 0: raise SystemExit(f"torchrun with {nproc} processes failed:\n{run.stderr[-3000:]}")
        r = json.loads(out.read_text())
        return r["items"] / r["seconds"]


def bench_cpu(args):
    speeds = {1: [], 2: []}
    for i in range(args.rounds):
        for nproc in ((1, 2) if i % 2 == 0 else (2, 1)): speeds[nproc].append(torchrun_case(nproc, args))
    one, two = max(speeds[1]), max(speeds[2])
    print(f"CPU, tiny_cnn at 32 px, {args.items} items per epoch, global batch {args.bs}: 1 process {one:.0f} items/s, "
          f"2 processes {two:.0f} items/s, ratio 2/1 {two / one:.2f} (best of {args.rounds})", flush=True)


# ---- GPU: the Learner against a hand-written loop ----
def raw_loop(model, train, valid, epochs, lr):
    "The loop you would write: autocast float16, a GradScaler, channels-last inputs, a validation pass per epoch."
    opt, scaler = fast_adamw(model.parameters(), lr=lr), torch.amp.GradScaler("cuda")
    for _ in range(epochs):
        model.train()
        for x, y in train:
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16): loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward(); scaler.unscale_(opt); scaler.step(opt); scaler.update(); opt.zero_grad()
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            losses = [F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y) for x, y in valid]
        torch.stack(losses).mean().item()


def bench_gpu(args):
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    x, y = synthetic(args.gpu_items + args.gpu_items // 8, args.size, device=device)
    n = args.gpu_items
    train = lambda: TensorLoader(x[:n], y[:n], bs=args.gpu_bs, shuffle=True, drop_last=True)
    valid = lambda: TensorLoader(x[n:], y[n:], bs=args.gpu_bs)

    def fresh():
        torch.manual_seed(0)
        return xresnet18(n_out=10).to(device, memory_format=torch.channels_last)

    def time_raw():
        model = fresh(); torch.cuda.synchronize(); start = time.perf_counter()
        raw_loop(model, train(), valid(), args.gpu_epochs, 1e-3); torch.cuda.synchronize()
        return time.perf_counter() - start

    def time_learner():
        learn = Learner(Batches(train(), valid()), fresh(), lr=1e-3, device=device, mixed_precision="fp16",
                        channels_last=True, progress=False)
        with contextlib.redirect_stdout(io.StringIO()): learn.to_distributed()  # its line about the batch, once is enough
        torch.cuda.synchronize(); start = time.perf_counter()
        learn.fit(args.gpu_epochs); torch.cuda.synchronize()
        return time.perf_counter() - start

    time_raw(); time_learner()  # warm-up: cuDNN picks its kernels
    raw, learner = [], []
    for i in range(args.rounds):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            (raw if which == 0 else learner).append(time_raw() if which == 0 else time_learner())
    images = (n // args.gpu_bs) * args.gpu_bs * args.gpu_epochs
    r, l = images / min(raw), images / min(learner)
    print(f"GPU ({torch.cuda.get_device_name()}), xresnet18 at {args.size} px, batch {args.gpu_bs}, float16 + channels-last: "
          f"raw loop {r:.0f} images/s, Learner.to_distributed() {l:.0f} images/s, ratio {l / r:.3f} (goal >= 0.95; "
          f"best of {args.rounds})", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--items", type=int, default=2048, help="CPU: training items per epoch")
    p.add_argument("--bs", type=int, default=64, help="CPU: global batch (each of N processes takes bs / N)")
    p.add_argument("--epochs", type=int, default=2, help="CPU: timed epochs per run (the best is kept)")
    p.add_argument("--gpu", action="store_true", help="run the GPU comparison (default: when CUDA is available)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU comparison")
    p.add_argument("--size", type=int, default=128, help="GPU: image size")
    p.add_argument("--gpu-bs", type=int, default=128)
    p.add_argument("--gpu-items", type=int, default=8192)
    p.add_argument("--gpu-epochs", type=int, default=2)
    p.add_argument("--cpu-worker", default=None, help=argparse.SUPPRESS)  # set by torchrun_case: run one worker
    args = p.parse_args()
    if args.cpu_worker: return cpu_worker(args, Path(args.cpu_worker))
    if not args.no_cpu: bench_cpu(args)
    if args.gpu or torch.cuda.is_available():
        if not torch.cuda.is_available(): raise SystemExit("--gpu: CUDA is not available on this machine.")
        bench_gpu(args)


if __name__ == "__main__":
    main()

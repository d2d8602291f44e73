"""Does course.vision.models.xresnet's xresnet cost anything beyond its architecture?

Times a full training step (forward, backward, optimizer step) of xresnet18/34/50 (course.vision.models.xresnet, chapter 14)
and of torchvision's resnet18/34/50, at the same input size and batch size, in one run. The xresnets do more
arithmetic than their torchvision peers (a stem of three 3x3 convolutions instead of one 7x7, an average pool
in each downsampling shortcut), so raw images/second is not a fair comparison. The script also counts each
model's forward FLOPs per image (convolutions and matrix products, with torch.utils.flop_counter) and reports

    efficiency = images/second x GFLOPs/image      (GFLOP/s of useful forward work)

and, for each pair, `xresnet efficiency / torchvision efficiency`: throughput per GFLOP of the xresnet relative
to its peer. 1.0 means the xresnet turns FLOPs into images as efficiently as torchvision's ResNet; the goal is
at least 0.95. The raw speed ratio (images/second) is printed too. With --controls it also times each xresnet
with its tricks off (`deep_stem=False, pool_shortcut=False`, named e.g. `xresnet50-plain`): torchvision's exact
architecture built by course.vision.models.xresnet, so its ratio measures the implementation alone.

    python bench/models.py                           # CPU-friendly: 128 px, batch 4, 10 rounds of 1 step
    python bench/models.py --controls                # also the tricks-off controls
    python bench/models.py --size 224 --bs 64 --steps 10 --rounds 5 --amp --channels-last    # on a GPU

Below 128 px the last stage's grid is 3x3 or smaller, and on some CPU builds PyTorch runs a 1x1 convolution
with many channels on such a tiny grid through a slow kernel (the xresnet shortcut's stride-1 1x1 conv hits
it, torchvision's stride-2 one does not): small sizes then measure that kernel, not the architectures.

Models are timed round-robin (one timing of each, then again, `--rounds` times) and the best round of each
model is kept, so that a busy machine slows every model alike. On a CPU the default is one thread and this
process's CPU time (`--clock cpu`): on a machine shared with other jobs, wall time mostly measures the
neighbours. Per CPU-second is not per second of wall time; the ratios are what the benchmark is about.
"""
import argparse
import time

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from course.vision.models.xresnet import xresnet18, xresnet34, xresnet50

PAIRS = [("xresnet18", xresnet18, "resnet18", torchvision.models.resnet18),
         ("xresnet34", xresnet34, "resnet34", torchvision.models.resnet34),
         ("xresnet50", xresnet50, "resnet50", torchvision.models.resnet50)]


def tricks_off(make):
    "The xresnet with the 7x7 stem and strided 1x1 shortcuts: torchvision's architecture, built by course.vision.models.xresnet."
    return lambda: make(deep_stem=False, pool_shortcut=False)


CONTROLS = [(f"{x}-plain", tricks_off(xmake), t, tmake) for x, xmake, t, tmake in PAIRS]


def forward_gflops(model, size):
    "Forward-pass GFLOPs for one image of `size` x `size` (a multiply-add counts 2), on the CPU in float32."
    model = model.cpu().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad(): model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


class Trainer:
    "One model ready to train on one fixed random batch: SGD with momentum, cross-entropy, optional AMP and channels-last."
    def __init__(self, model, args, device):
        self.device, self.args = device, args
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(args.bs, 3, args.size, args.size, generator=g).to(device, memory_format=fmt)
        self.y = torch.randint(0, 1000, (args.bs,), generator=g).to(device)
        self.amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if args.amp else None
        self.scaler = torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None

    def step(self):
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = F.cross_entropy(self.model(self.x), self.y)
        if self.scaler is None:
            loss.backward()
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def sync(self):
        if self.device.type == "cuda": torch.cuda.synchronize(self.device)

    def images_per_second(self, steps):
        "Images per second over `steps` training steps, by the clock `args.clock` chose."
        clock = time.process_time if self.args.clock == "cpu" else time.perf_counter
        self.sync()
        start = clock()
        for _ in range(steps): self.step()
        self.sync()
        return steps * self.args.bs / (clock() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default 128; 224 on a GPU)")
    parser.add_argument("--bs", type=int, default=4, help="batch size (default 4)")
    parser.add_argument("--steps", type=int, default=1, help="timed training steps per round (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    parser.add_argument("--rounds", type=int, default=10, help="round-robin timings per model; the best is kept (default 10)")
    parser.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on a CPU, torch's choice with a GPU)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="time steps by this process's CPU time or by wall time (default: cpu on a CPU, wall on a GPU)")
    parser.add_argument("--controls", action="store_true",
                        help="also time each xresnet with its tricks off (the same architecture and FLOPs as its peer)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and args.threads is None: args.threads = 1
    if args.threads: torch.set_num_threads(args.threads)
    if args.clock is None: args.clock = "cpu" if device.type == "cpu" else "wall"
    if device.type == "cuda": torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    pairs = PAIRS + (CONTROLS if args.controls else [])
    makers = {name: make for x, xmake, t, tmake in pairs for name, make in ((x, xmake), (t, tmake))}
    names, trainers, flops = [], {}, {}
    for name, make in makers.items():   # each torchvision model once, even when two pairs name it
        model = make()
        flops[name] = forward_gflops(model, args.size)
        trainers[name] = Trainer(model, args, device)
        names.append(name)
    for name in names:
        for _ in range(args.warmup): trainers[name].step()
    best = {name: 0.0 for name in names}
    for _ in range(args.rounds):
        for name in names: best[name] = max(best[name], trainers[name].images_per_second(args.steps))

    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, size {args.size}, bs {args.bs}, "
          f"steps {args.steps} x {args.rounds} rounds, amp {args.amp}, channels_last {args.channels_last}, clock {args.clock}")
    print(f"{'model':<16} {'GFLOPs/img':>10} {'img/s':>9} {'GFLOP/s':>9}")
    for name in names:
        print(f"{name:<16} {flops[name]:>10.3f} {best[name]:>9.1f} {best[name] * flops[name]:>9.1f}")
    print()
    for xname, _, tname, _ in pairs:
        speed = best[xname] / best[tname]
        eff = speed * flops[xname] / flops[tname]
        print(f"{xname} vs {tname}: throughput per GFLOP {eff:.2f} ({'ok' if eff >= 0.95 else 'below'} goal 0.95), "
              f"images/s {speed:.2f}, FLOPs {flops[xname] / flops[tname]:.2f}x")


if __name__ == "__main__":
    main()

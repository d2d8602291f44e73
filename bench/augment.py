"""Batch augmentation with key points, against the same augmentation of the images alone (chapter 6).

A batch with key points (images, points) goes through `BatchAugment.augment_with_points`: the random maps are
drawn once, the images resampled through them, and the points moved through their inverses. A batch of
(images, labels) goes through the image-only path with the same settings. Both run in this process on the same
images, alternating batch by batch; the ratio is with points / images only, of the median batch times (the
best times are printed too; on a busy machine they are noisier) (goal: at most 1.10).

    python bench/augment.py                      # bs 64, 192 px in, 128 px out, 40 batches on each path
    python bench/augment.py --bs 128 --points 68 --device cuda
"""
import argparse
import statistics
import time

import torch

from course.data.core import TensorImage
from course.vision.augment import BatchAugment, warp_points
from course.vision.data import TensorPoint


def one_batch(aug, batch, device) -> float:
    "Seconds for one training batch through `aug`."
    start = time.perf_counter()
    aug(batch, split_idx=0)
    if device.type == "cuda": torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--presize", type=int, default=192, help="side of the images coming in")
    p.add_argument("--size", type=int, default=128, help="side of the augmented images")
    p.add_argument("--points", type=int, default=1, help="key points per image")
    p.add_argument("--batches", type=int, default=40, help="batches timed on each path, alternating")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    x = TensorImage(torch.rand(args.bs, 3, args.presize, args.presize, generator=g).to(device))
    labels = torch.randint(0, 10, (args.bs,), generator=g).to(device)
    pts = TensorPoint((torch.rand(args.bs, args.points, 2, generator=g) * 2 - 1).to(device))
    kw = dict(size=args.size, min_scale=0.75, max_rotate=10., max_zoom=1.1, max_warp=0.2, p_affine=0.75)
    plain, with_points = BatchAugment(seed=1, **kw), BatchAugment(seed=1, **kw)
    assert not any(getattr(o, "is_key_points", False) for o in (x, labels))
    plain((x, labels), split_idx=0), with_points((x, pts), split_idx=0)  # warm up
    times = {"images": [], "points": []}
    for i in range(args.batches):  # alternate batch by batch (ABBA), so that a busy moment of the machine hurts both
        order = [("images", plain, (x, labels)), ("points", with_points, (x, pts))]
        for name, aug, batch in (order if i % 2 == 0 else order[::-1]):
            times[name].append(one_batch(aug, batch, device))
    mats = plain.matrices(args.bs, device)
    start = time.perf_counter()
    for _ in range(100): warp_points(pts.as_subclass(torch.Tensor), mats)
    if device.type == "cuda": torch.cuda.synchronize()
    point_work = (time.perf_counter() - start) / 100  # the only extra work of the points path: moving the points
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}

    print(f"bs {args.bs}, {args.presize} px -> {args.size} px, {args.points} point(s) per image, device {device}, "
          f"{args.batches} batches on each path")
    print(f"images only:        median {med['images'] * 1e3:7.2f} ms, best {best['images'] * 1e3:7.2f} ms per batch")
    print(f"images with points: median {med['points'] * 1e3:7.2f} ms, best {best['points'] * 1e3:7.2f} ms per batch")
    print(f"ratio with points / images only (medians): {med['points'] / med['images']:.3f} (goal: at most 1.10)")
    print(f"moving the points alone: {point_work * 1e3:.3f} ms per batch, {point_work / med['images']:.2%} of an image-only batch")


if __name__ == "__main__":
    main()

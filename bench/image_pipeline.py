"""Images per second through the course's DataBlock pipeline, against torchvision's ImageFolder pipeline.

Both read the same folder of JPEGs and do equivalent work: decode, resize, a random resized crop, a flip,
a small rotation and zoom, a perspective warp, a lighting change, conversion to a normalised float tensor,
batching. The course does it the chapter 5 way (presizing: one resize per item, then all the augmentations
on the batch in one interpolation, on the GPU when the device is one, else in the loader's workers);
torchvision does it item by item in the loader's workers. Same batch size, same number of workers, same
images, one run; the ratio is course / torchvision.

    python bench/image_pipeline.py                  # 400 photo-sized JPEGs, bs 64, 2 workers
    python bench/image_pipeline.py --images 2000 --workers 8 --device cuda
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from course.data.block import DataBlock, FuncSplitter, CategoryBlock, parent_label
from course.vision.data import ImageBlock
from course.vision.augment import Normalize, aug_transforms
from course.vision.core import ResizeTo, get_image_files


def make_jpegs(folder: Path, n: int, seed: int = 0):
    "`n` photo-sized JPEGs (500x375, smooth colour fields plus noise) in two class folders, ImageFolder layout."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500] / 500.0
    for i in range(n):
        cls = folder / ("a" if i % 2 else "b")
        cls.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(1, 6, size=3)
        img = np.stack([np.sin(f[c] * xx + f[(c + 1) % 3] * yy + c) for c in range(3)], -1) * 90 + 128
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(cls / f"{i:05d}.jpg", quality=90)


def rate(loader, epochs: int, device) -> float:
    "Images per second over `epochs` passes of `loader`, counting until the last batch is on `device`."
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            xb = xb.to(device, non_blocking=True)
            n += len(xb)
    if device.type == "cuda": torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--presize", type=int, default=192, help="the per-item resize (presizing)")
    p.add_argument("--size", type=int, default=128, help="the final image size")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root, args.images)

        block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                          splitter=FuncSplitter(lambda f: False),  # every image in the training set
                          item_tfms=ResizeTo(args.presize),
                          batch_tfms=[*aug_transforms(size=args.size), Normalize()])
        ours = block.dataloaders(root, bs=args.bs, num_workers=args.workers, device=device).train

        tfms = v2.Compose([v2.PILToTensor(), v2.Resize(args.presize, antialias=True),
                           v2.RandomResizedCrop(args.size, scale=(0.75, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, scale=(1.0, 1.1)),
                           v2.RandomPerspective(0.2, p=0.75), v2.ColorJitter(brightness=0.2, contrast=0.2),
                           v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        theirs = DataLoader(datasets.ImageFolder(root, transform=tfms), batch_size=args.bs, shuffle=True,
                            num_workers=args.workers, pin_memory=device.type == "cuda",
                            persistent_workers=args.workers > 0)

        best = {"course": 0.0, "torchvision": 0.0}
        for _ in range(args.rounds):
            best["torchvision"] = max(best["torchvision"], rate(theirs, args.epochs, device))
            best["course"] = max(best["course"], rate(ours, args.epochs, device))

    print(f"{args.images} JPEGs 500x375, presize {args.presize}, size {args.size}, bs {args.bs}, "
          f"{args.workers} workers, device {device}, best of {args.rounds} rounds of {args.epochs} epochs")
    print(f"course DataBlock:        {best['course']:7.0f} images/s")
    print(f"torchvision ImageFolder: {best['torchvision']:7.0f} images/s")
    print(f"ratio course / torchvision: {best['course'] / best['torchvision']:.2f} (goal: at least 1.0)")


if __name__ == "__main__":
    main()

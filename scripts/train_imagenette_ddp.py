"""Train an xresnet on Imagenette with every GPU of the machine, under torchrun and DistributedDataParallel.

    torchrun --standalone --nproc_per_node=4 scripts/train_imagenette_ddp.py --size 128 --bs 64 --epochs 5 --amp --channels-last
    python scripts/train_imagenette_ddp.py --epochs 1     # the same script in one process

torchrun starts one process per GPU (`--nproc_per_node`, at most the number of GPUs); on a machine without a GPU
the processes share the CPU cores, with gloo instead of NCCL. `--bs` is the batch size of each process: an
optimizer step sees `nproc_per_node x bs` images. Only rank 0 prints the table and writes the exported model.
Chapter 19 ("Beyond one GPU") explains every step.
"""
import argparse

from torch.distributed.elastic.multiprocessing.errors import record

from course.callback.core import GradientClip
from course.data.block import CategoryBlock, DataBlock, GrandparentSplitter, parent_label
from course.data.external import untar_data, URLs
from course.distributed import distributed, is_main, rank, rank0_first
from course.export import build_model
from course.learner import Learner
from course.metrics import accuracy
from course.utils import set_seed
from course.vision.augment import aug_transforms, IMAGENET_STATS, Normalize
from course.vision.core import get_image_files, ResizeTo
from course.vision.data import ImageBlock
from course.vision.models.xresnet import xresnet18, xresnet34, xresnet50

ARCHS = {"xresnet18": xresnet18, "xresnet34": xresnet34, "xresnet50": xresnet50}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="xresnet50", choices=sorted(ARCHS))
    p.add_argument("--size", type=int, default=128, help="image side in pixels (up to 160: the 160 px copy is downloaded)")
    p.add_argument("--bs", type=int, default=64, help="batch size of each process")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate; default: the LR finder's 'steep' suggestion")
    p.add_argument("--workers", type=int, default=4, help="data-loading worker processes per training process")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 with gradient scaling on GPUs)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (with --amp, on GPUs)")
    p.add_argument("--clip", type=float, default=None, help="clip the gradient norm to this value")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="imagenette_ddp.pth", help="where rank 0 exports the trained model")
    return p.parse_args(argv)


def imagenette_dls(size, bs, workers, device):
    "Imagenette loaders at `size` px, as chapter 7 builds them: presized crops, batch augmentation, ImageNet statistics."
    path = rank0_first(untar_data, URLs.IMAGENETTE_160 if size <= 160 else URLs.IMAGENETTE_320)  # one download
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                      splitter=GrandparentSplitter(valid_name="val"), item_tfms=ResizeTo(min(2 * size, 160 if size <= 160 else 320)),
                      batch_tfms=aug_transforms(size=size) + [Normalize(*IMAGENET_STATS)])
    return block.dataloaders(path, bs=bs, num_workers=workers, device=device)


@record  # if this process fails, torchrun's summary shows its traceback
def main(argv=None):
    args = parse_args(argv)
    with distributed() as device:  # the process group from torchrun's environment, left however the block ends
        set_seed(args.seed + rank())  # a different augmentation stream per process; DDP gives all the same weights
        dls = imagenette_dls(args.size, args.bs, args.workers, device)
        model = build_model(ARCHS[args.arch], n_out=len(dls.vocab))  # describable: export can rebuild it
        learn = Learner(dls, model, metrics=accuracy, cbs=[GradientClip(args.clip)] if args.clip else None,
                        device=device, mixed_precision=args.amp, channels_last=args.channels_last)
        learn.to_distributed()  # shards, DistributedDataParallel during fit, one table (rank 0)
        lr = args.lr or learn.lr_find(show_plot=False).steep  # the same suggestion in every process
        if is_main(): print(f"peak learning rate {lr:.2e}")
        learn.fit_one_cycle(args.epochs, lr)
        if is_main(): print(f"exported to {learn.export(args.out)}")  # the model itself, not the DDP wrapper


if __name__ == "__main__":
    main()

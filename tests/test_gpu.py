"""The CUDA paths: batch augmentation on the GPU, loaders that deliver to it, float16 training with a gradient
scaler, channels-last, the fused optimizer. Skipped on a machine without a CUDA GPU; on a GPU server run
`pytest tests/test_gpu.py` (and `course test`, whose notebooks then train on the GPU too)."""
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def pets_dls(course_home, monkeypatch):
    "Pets-twin DataLoaders delivering to the GPU: presized on the item, augmented on the batch, two workers."
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    from course.data.external import URLs, untar_data
    from course.data.block import CategoryBlock, DataBlock, RandomSplitter, RegexLabeller
    from course.vision.data import ImageBlock
    from course.vision.augment import Normalize, aug_transforms
    from course.vision.core import ResizeTo, get_image_files
    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, splitter=RandomSplitter(seed=42),
                      get_y=RegexLabeller(r"^(.+)_\d+\.jpg$"), item_tfms=ResizeTo(96),
                      batch_tfms=aug_transforms(size=64, seed=0) + [Normalize()])
    return block.dataloaders(untar_data(URLs.PETS) / "images", bs=32, num_workers=2, device="cuda")


def test_batch_augment_gives_the_same_images_on_the_gpu():
    from course.data.core import TensorImage
    from course.vision.augment import BatchAugment
    x = TensorImage(torch.rand(8, 3, 48, 48, generator=torch.Generator().manual_seed(0)))
    cpu = BatchAugment(size=32, seed=1)(x, split_idx=0)
    gpu = BatchAugment(size=32, seed=1)(TensorImage(x.cuda()), split_idx=0)
    assert gpu.is_cuda and type(gpu) is TensorImage
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)  # same random maps (drawn on the CPU), same sampling


def test_loaders_deliver_augmented_batches_to_the_gpu(pets_dls):
    from course.data.core import TensorCategory, TensorImage
    xb, yb = pets_dls.one_batch()
    assert xb.is_cuda and yb.is_cuda and type(xb) is TensorImage and type(yb) is TensorCategory
    assert xb.shape == (32, 3, 64, 64) and xb.dtype == torch.float32
    # On a GPU the batch transforms run in the main process, after the copy: not in the workers.
    assert pets_dls.train.loader.collate_fn.after_batch is None and pets_dls.train.loader.pin_memory
    assert type(TensorImage(torch.ones(2)).pin_memory()) is TensorImage  # pinned memory keeps the type
    assert abs(float(xb.mean())) < 1.0  # normalised
    samples = pets_dls.train.decode_batch((xb, yb), max_n=2)
    assert samples[0][0].size == (64, 64) and samples[0][1] in pets_dls.vocab


def test_vision_learner_trains_in_float16_channels_last(pets_dls):
    from course.utils import set_seed
    from course.vision.learner import vision_learner
    set_seed(0)
    learn = vision_learner(pets_dls, "resnet18", pretrained=False, progress=False, mixed_precision=True,
                           channels_last=True)
    assert learn.amp_dtype == torch.float16 and learn.scaler is not None  # float16 on CUDA needs the scaler
    assert learn.model[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    suggested = learn.lr_find(start_lr=1e-5, end_lr=1, num_it=20, show_plot=False)
    assert 1e-5 <= suggested.steep <= 1
    learn.fit_one_cycle(2, 3e-3)
    hist = learn.recorder.history
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hist)
    assert hist[-1]["valid_loss"] < hist[0]["train_loss"]  # it learned something
    preds, targs = learn.get_preds()
    assert preds.dtype == torch.float32 and torch.allclose(preds.sum(1), torch.ones(len(preds), device=preds.device))


def test_fused_adamw_on_the_gpu_matches_the_reference_kernel():
    from course.optim import fast_adamw
    g = torch.Generator().manual_seed(0)
    w0, grads = torch.randn(50, 20, generator=g), [torch.randn(50, 20, generator=g) for _ in range(20)]
    a, b = w0.clone().cuda().requires_grad_(), w0.clone().cuda().requires_grad_()
    fused = fast_adamw([a], lr=1e-2)
    assert fused.defaults.get("fused")
    plain = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01, foreach=False)
    for gr in grads:
        a.grad, b.grad = gr.cuda(), gr.cuda()
        fused.step(); plain.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_course_optimizers_match_torch_on_the_gpu():
    from course.optim import Adam  # decoupled weight decay by default: torch's AdamW
    g = torch.Generator().manual_seed(1)
    w0, grads = torch.randn(30, generator=g), [torch.randn(30, generator=g) for _ in range(30)]
    a, b = w0.clone().cuda().requires_grad_(), w0.clone().cuda().requires_grad_()
    ours = Adam([a], lr=1e-2)
    theirs = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01, foreach=False)
    for gr in grads:
        a.grad, b.grad = gr.cuda(), gr.cuda()
        ours.step(); theirs.step()
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_bench_scripts_run_on_the_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(repo / "bench" / "image_pipeline.py"), "--images", "128", "--rounds", "1",
                          "--epochs", "1", "--device", "cuda"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio course / torchvision" in out.stdout

"""BN-Inception training throughput and ImageNet input-pipeline throughput: `make bench-inception`.

Three measurements, printed as a table and written as JSON to outputs/bench/inception.json:

* model: training images/s of BN-Inception (norm=bn, 1000 classes, momentum SGD) on fake ImageNet
  batches already on the device, so only the network is timed. On CUDA: bf16 autocast,
  channels_last, batch 256 per GPU, 224x224 (the figure the README's GPU-hour estimate uses).
  On CPU: a small batch and a few steps (the same code path, to check it and for scale).
* proxy: milliseconds per optimizer step of the CPU proxy (width 0.25, 1x32x32, batch 32,
  10 classes), the figure that sizes `make reproduce-proxy`.
* loader: images/s of the real-JPEG ImageNet training loader (ImageNetDataModule: decode,
  RandomResizedCrop 224, flip, full photometric distortions, normalize) over a generated folder
  of ImageNet-sized JPEGs (outputs/bench/jpeg_imagenet/), with every CPU core as a worker, and per
  worker. The pipeline keeps up when loader images/s >= model images/s.

Usage: python benchmarks/bench_inception.py [--device auto|cpu|cuda] [--batch-size N] [--steps N] ...
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bnrepro.data.imagenet import FakeImageNetDataModule, ImageNetDataModule
from bnrepro.models.inception_bn import BNInception

OUT_DIR = Path(__file__).resolve().parents[1] / "outputs" / "bench"
JPEG_SIZE = (500, 375)  # a typical ImageNet training image (the mean is about 400x350, ~110 KB)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 8 on CPU")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default: 50 on CUDA, 4 on CPU")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first; default: 10 on CUDA, 1 on CPU")
    parser.add_argument("--proxy-steps", type=int, default=20)
    parser.add_argument(
        "--loader-images", type=int, default=None, help="JPEGs to generate; default: 2048 on CUDA, 192 on CPU"
    )
    parser.add_argument("--loader-workers", type=int, default=None, help="default: every CPU core")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op CPU threads for the model (default: torch's)"
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR / "inception.json")
    return parser.parse_args(argv)


# --- model throughput --------------------------------------------------------------------------
def fake_batch(batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch from FakeImageNetDataModule (the project's fake_imagenet data), without the step dim."""
    dm = FakeImageNetDataModule(image_size=image_size, train_size=batch_size, val_size=1, batch_size=batch_size)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    return x[0], y[0]


def time_training(
    net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int, bf16: bool
) -> list[float]:
    """Seconds per optimizer step (forward, backward, SGD step), measured one step at a time."""
    device = x.device
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0015, momentum=0.9, weight_decay=4e-5)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def model_throughput(device: torch.device, batch_size: int, image_size: int, steps: int, warmup: int) -> dict:
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True
    net = BNInception(num_classes=1000).to(device)
    x, y = fake_batch(batch_size, image_size)
    x, y = x.to(device), y.to(device)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = time_training(net, x, y, steps, warmup, bf16=cuda)
    median = statistics.median(times)
    return {
        "batch_size": batch_size,
        "image_size": image_size,
        "precision": "bf16 autocast" if cuda else "fp32",
        "memory_format": "channels_last" if cuda else "contiguous",
        "steps": steps,
        "warmup": warmup,
        "seconds_per_step_median": median,
        "images_per_s": batch_size / median,
        "images_per_s_mean": batch_size * len(times) / sum(times),
    }


def proxy_step_time(steps: int) -> dict:
    """The CPU proxy's optimizer step (conf/experiment/inception_proxy.yaml), one intra-op thread as in the sweep."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = BNInception(num_classes=10, width_multiplier=0.25, in_channels=1)
        x, y = torch.randn(32, 1, 32, 32), torch.randint(10, (32,))
        times = time_training(net, x, y, steps, warmup=3, bf16=False)
    finally:
        torch.set_num_threads(threads)
    return {
        "width_multiplier": 0.25,
        "input": [1, 32, 32],
        "batch_size": 32,
        "threads": 1,
        "steps": steps,
        "ms_per_step_median": 1000 * statistics.median(times),
        "ms_per_step_min": 1000 * min(times),
    }


# --- input pipeline ----------------------------------------------------------------------------
def write_jpeg_folder(root: Path, count: int, classes: int = 8) -> dict:
    """`count` ImageNet-sized JPEGs in train/<wnid>/ and val/<wnid>/ (smooth random scenes plus noise, quality 90)."""
    rng = np.random.default_rng(0)
    width, height = JPEG_SIZE
    sizes = []
    for split, split_count in (("train", count), ("val", classes)):
        for i in range(split_count):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            scene = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
            pixels = np.clip(scene + rng.normal(0, 12, size=scene.shape), 0, 255).astype(np.uint8)
            path = folder / f"img_{i:06d}.JPEG"
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
            sizes.append(path.stat().st_size)
    return {"images": count, "size": list(JPEG_SIZE), "mean_kb": statistics.fmean(sizes) / 1024}


def loader_throughput(root: Path, workers: int, batch_size: int, image_size: int) -> dict:
    """Images/s of the training loader over two passes of the folder; the second (workers warm) is reported."""
    dm = ImageNetDataModule(
        str(root), batch_size=batch_size, num_workers=workers, pin_memory=False, image_size=image_size,
        photometric="full", drop_last=False,
    )  # fmt: skip
    dm.setup()
    loader = dm.train_dataloader()
    passes = []
    for _ in range(2):
        start, images = time.perf_counter(), 0
        for x, _ in loader:
            images += x.shape[1]
        passes.append(images / (time.perf_counter() - start))
    return {
        "workers": workers,
        "batch_size": batch_size,
        "images_per_s": passes[-1],
        "images_per_s_first_pass": passes[0],
    }


# --- main --------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("bench_inception: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size or (256 if cuda else 8)
    steps, warmup = args.steps or (50 if cuda else 4), args.warmup if args.warmup is not None else (10 if cuda else 1)
    cores = os.cpu_count() or 1
    workers = args.loader_workers or cores

    print(f"model: BN-Inception on {device}, batch {batch_size}, {args.image_size}px, {steps} steps ...", flush=True)
    model = model_throughput(device, batch_size, args.image_size, steps, warmup)
    print("proxy: width 0.25, 1x32x32, batch 32, 1 thread ...", flush=True)
    proxy = proxy_step_time(args.proxy_steps)
    jpeg_root = args.out.parent / "jpeg_imagenet"
    shutil.rmtree(jpeg_root, ignore_errors=True)
    jpegs = write_jpeg_folder(jpeg_root, args.loader_images or (2048 if cuda else 192))
    print(
        f"loader: {jpegs['images']} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]} ({jpegs['mean_kb']:.0f} KB), "
        f"{workers} workers ...",
        flush=True,
    )
    loader = loader_throughput(jpeg_root, workers, 64, args.image_size)
    loader["images_per_s_per_worker"] = loader["images_per_s"] / workers
    shutil.rmtree(jpeg_root, ignore_errors=True)

    result = {
        "benchmark": "bench_inception",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "device": torch.cuda.get_device_name(0)
        if cuda
        else f"CPU ({platform.processor() or platform.machine()}, {cores} cores)",
        "torch": torch.__version__,
        "cpu_cores": cores,
        "model_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "model": model,
        "proxy": proxy,
        "jpegs": jpegs,
        "loader": loader,
        "loader_keeps_up": loader["images_per_s"] >= model["images_per_s"],
        "loader_workers_needed": model["images_per_s"] / loader["images_per_s_per_worker"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print()
    print(f"{'measurement':<58} {'value':>14}")
    print("-" * 73)
    print(f"{'model: training images/s (' + result['device'] + ')':<58} {model['images_per_s']:>14.1f}")
    print(f"{'  per step, median (s)':<58} {model['seconds_per_step_median']:>14.4f}")
    print(f"{'proxy: ms per step (width 0.25, 32px, batch 32, 1 thread)':<58} {proxy['ms_per_step_median']:>14.1f}")
    print(f"{'loader: images/s, ' + str(workers) + ' workers':<58} {loader['images_per_s']:>14.1f}")
    print(f"{'loader: images/s per worker':<58} {loader['images_per_s_per_worker']:>14.1f}")
    print(f"{'loader workers needed to feed the model':<58} {result['loader_workers_needed']:>14.1f}")
    print(f"{'loader keeps up with the model':<58} {str(result['loader_keeps_up']):>14}")
    print(
        f"load average during the run: {', '.join(f'{v:.2f}' for v in result['load_average'])} "
        "(the machine is shared if > cores)"
    )
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

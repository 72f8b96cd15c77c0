"""One epoch of images from the preprocessing cache vs FairCLIP's per-sample decode, at real resolution.

    PYTHONPATH=. python bench/bench_cache.py [--n 240] [--size 224] [--dtype uint8|float32]

Writes `--n` FairVLMed-format files with 664×512 images (synthetic fundus upscaled, plus per-file noise
so compression behaves like a photo), then times, in one process on the CPU:
  per-sample  np.load → ['slo_fundus'].astype(float32) → PIL.Image.fromarray → open_clip's eval
              transform (resize 224 bicubic, centre crop, RGB, ToTensor, normalise), batched by 32
              (FairCLIP's data path, FairCLIP/src/modules.py, single worker);
  cache build the one-time pass that fills the cache (same transform, kept as uint8);
  cached      one epoch of shuffled batches of 32 from the memory-mapped cache, normalised on the fly.
The page cache is warm for both (the npz files were just written; the cache was just built).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fairbench.datasets import normalize_images  # noqa: E402
from fairbench.datasets.cache import SplitCache  # noqa: E402
from fairbench.datasets.fairvlmed.format import read_image  # noqa: E402
from fairbench.datasets.fairvlmed.synth import _fundus_batch, write_npz_deterministic  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def write_files(folder: Path, n: int, dtype: str) -> list[Path]:
    rng = np.random.default_rng(0)
    base = _fundus_batch(rng.uniform(0.2, 0.9, 16), np.zeros(16, bool), 166, 128, rng)
    folder.mkdir(parents=True)
    files = []
    for i in range(n):
        big = np.asarray(Image.fromarray(base[i % 16]).resize((512, 664), Image.BICUBIC), dtype=np.float32)
        big = np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(dtype)
        path = folder / f"data_{i + 1:05d}.npz"
        write_npz_deterministic(path, {"slo_fundus": big, "glaucoma": np.array(i % 2)})
        files.append(path)
    return files


def per_sample_epoch(files: list[Path], size: int, batch: int) -> float:
    from open_clip.transform import image_transform

    preprocess = image_transform(size, is_train=False, mean=MEAN, std=STD)
    order = np.random.default_rng(1).permutation(len(files))
    t = time.perf_counter()
    for start in range(0, len(files), batch):
        imgs = []
        for i in order[start : start + batch]:
            with np.load(files[i]) as npz:
                imgs.append(preprocess(Image.fromarray(npz["slo_fundus"].astype(np.float32))))
        torch.stack(imgs).sum()
    return time.perf_counter() - t


def cached_epoch(images: torch.Tensor, batch: int) -> float:
    order = torch.from_numpy(np.random.default_rng(1).permutation(images.shape[0]))
    t = time.perf_counter()
    for start in range(0, images.shape[0], batch):
        normalize_images(images[order[start : start + batch]], MEAN, STD).sum()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", choices=("uint8", "float32"), default="uint8")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(prefix="fairbench-bench-") as tmp:
        files = write_files(Path(tmp) / "Training", args.n, args.dtype)
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"{args.n} files, 664×512 {args.dtype} slo_fundus, {mb:.0f} MB on disk → {args.size} px, "
              f"batch {args.batch}, torch threads {torch.get_num_threads()}")
        per_sample = min(per_sample_epoch(files, args.size, args.batch) for _ in range(2))
        t = time.perf_counter()
        arr = SplitCache(Path(tmp) / "cache", "bench", files[0].parent, "train", files).images(args.size, read_image)
        build = time.perf_counter() - t
        images = torch.from_numpy(arr).expand(-1, 3, -1, -1)
        cached = min(cached_epoch(images, args.batch) for _ in range(3))
    print(f"{'per-sample decode (FairCLIP)':<32}{per_sample:8.3f} s/epoch  {per_sample / args.n * 1e3:7.2f} ms/img")
    print(f"{'cache build (once)':<32}{build:8.3f} s        {build / args.n * 1e3:7.2f} ms/img")
    print(f"{'from cache':<32}{cached:8.3f} s/epoch  {cached / args.n * 1e3:7.2f} ms/img")
    print(f"speed-up per epoch: {per_sample / cached:.1f}×")


if __name__ == "__main__":
    main()

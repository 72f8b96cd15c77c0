"""What zero-shot scoring of ViT-B/16 costs on this machine's CPU, measured on a subset and extrapolated.

    PYTHONPATH=. python bench/bench_zeroshot.py [--images 64] [--target 2000] [--batch 32]

The arch `b16` (OpenAI ViT-B/16, QuickGELU) with random weights (`--pretrained none`: the weights do not change the
time) scores `--images` random 224 px images with the two prompts, exactly as `fairbench run --method zeroshot`
does (fairbench.training.zeroshot.zero_shot_scores, batches of `--batch`, fp32 on a CPU). It prints the seconds per
image, measured twice (the first pass includes one-time warm-up; the second is the steady rate), and the time for
`--target` images extrapolated linearly from the steady rate: scoring is one forward pass per image, so its time is
linear in the image count at a fixed batch size. Side by side it measures this machine's matmul rate and counts one
image's FLOPs (torch.utils.flop_counter), and prints measured time / compute floor: a ratio a busy machine affects
less than the seconds. Loading and resizing the dataset's images to 224 px (once, then
cached) is not included.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--target", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import torch

    from fairbench.models.backbones import create_backbone
    from fairbench.training.zeroshot import zero_shot_scores

    t0 = time.perf_counter()
    backbone = create_backbone("b16", pretrained=None)
    build_s = time.perf_counter() - t0
    images = torch.randint(0, 256, (args.images, 3, backbone.image_size, backbone.image_size), dtype=torch.uint8)
    prompts = ("A photo of non-glaucoma", "A photo of glaucoma")
    normalize = backbone.normalizer("cpu")
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        zero_shot_scores(backbone.model, images, backbone.tokenize, prompts, normalize, torch.device("cpu"),
                         batch_size=args.batch)
        rates.append((time.perf_counter() - start) / args.images)
    steady = rates[1]
    # side by side: this machine's matmul rate now and the FLOPs of one image's forward, so the ratio of the measured
    # time to its compute floor can be compared across machines and loads
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone.model.encode_image(normalize(images[:1]))
    flops = counter.get_total_flops()
    a = torch.randn(1024, 1024)
    torch.mm(a, a)
    start = time.perf_counter()
    for _ in range(8):
        torch.mm(a, a)
    rate = 2 * 1024**3 * 8 / (time.perf_counter() - start)
    floor = flops / rate
    print(f"b16 (random init), {backbone.image_size} px, batch {args.batch}, {torch.get_num_threads()} torch threads")
    print(f"one image forward: {flops / 1e9:.1f} GFLOP; matmul rate now: {rate / 1e9:.0f} GFLOP/s; "
          f"compute floor {floor * 1000:.0f} ms/image; measured / floor = {steady / floor:.2f}")
    print(f"build model: {build_s:.1f} s")
    print(f"first pass:  {rates[0] * 1000:.0f} ms/image ({args.images} images)")
    print(f"steady pass: {steady * 1000:.0f} ms/image ({args.images} images)")
    print(f"extrapolated {args.target} images: {steady * args.target / 60:.1f} min "
          f"(linear in the image count; measured on {args.images})")


if __name__ == "__main__":
    main()

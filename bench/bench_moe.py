"""Fair-MoE cost at ViT-B/16 shapes on CPU: train step of `fairmoe` over `fairclip`, sparse MoE over dense.

Both train steps see the same batch and the same group batches (one per group of a 3-group attribute) and run
forward + backward + an Adam step with FairCLIP's optimiser settings. The layer comparison times one embedding
MoE at the image tower's shape (forward, and forward + backward), sparse dispatch against every expert on every
token with the same routing. Reps alternate between the compared functions so background load hits both alike.

    PYTHONPATH=. python bench/bench_moe.py            # targets: step ≤ 1.2×, sparse ≥ 3× faster
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

NOTE = ("Patient with elevated intraocular pressure and an enlarged cup-to-disc ratio of 0.7 in the right eye; "
        "visual field shows an early superior arcuate defect, consistent with glaucoma. Follow up")


def alternating(fns: dict[str, Callable[[], None]], warmup: int, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each function; reps alternate between them so drifting background load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def train_step_fn(method, model: torch.nn.Module, batch, groups) -> Callable[[], None]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.1, 0.1),
                           eps=1e-6, weight_decay=6e-5)

    def step() -> None:
        terms = method.loss_terms(model, batch, groups)
        opt.zero_grad(set_to_none=True)
        sum(t.float() for t in terms.values()).backward()
        opt.step()

    return step


def bench_steps(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    from fairbench.method import Batch
    from fairbench.models.backbones import create_backbone
    from fairbench.registry import get_method, load_builtin_methods

    load_builtin_methods()
    torch.manual_seed(0)
    backbone = create_backbone("b16", pretrained=None)
    size = backbone.image_size
    tokens = backbone.tokenize([NOTE[: 120 + 7 * i] for i in range(args.batch)])

    def batch(group: int | None) -> Batch:
        groups = torch.arange(args.batch) % 3 if group is None else torch.full((args.batch,), group)
        return Batch(images=torch.randn(args.batch, 3, size, size), tokens=tokens,
                     labels=torch.randint(0, 2, (args.batch,)), groups=groups)

    main = batch(None)
    group_batches = {g: batch(g) for g in range(3)}
    steps = {}
    for name in ("fairclip", "fairmoe"):
        cls = get_method(name)
        method = cls(cls.Settings(), attribute="race", n_groups=3)
        model = method.build(copy.deepcopy(backbone.model)).train()
        steps[name] = train_step_fn(method, model, main, group_batches)
    times = alternating(steps, args.warmup, args.reps)
    return times["fairclip"], times["fairmoe"]


def bench_layer(args: argparse.Namespace) -> dict[str, list[float]]:
    from fairbench_methods.fairmoe.layers import EmbeddingMoE

    from fairbench.models.backbones import create_backbone

    torch.manual_seed(0)
    visual = create_backbone("b16", pretrained=None).model.visual
    mlp = visual.transformer.resblocks[-1].mlp
    tokens = (visual.image_size[0] // visual.patch_size[0]) ** 2 + 1
    moe = EmbeddingMoE.from_mlp(mlp, n_experts=10, top_k=3, capacity=0.8, pooled_first=True)
    x = torch.randn(args.batch, tokens, mlp.c_fc.in_features)

    def sparse() -> None:
        moe.zero_grad(set_to_none=True)
        moe(x).sum().backward()

    def dense() -> None:
        moe.zero_grad(set_to_none=True)
        moe.forward_dense(x).sum().backward()

    with torch.no_grad():
        fwd = alternating({"sparse fwd": lambda: moe(x), "dense fwd": lambda: moe.forward_dense(x)},
                          args.warmup, args.reps)
    return {**fwd, **alternating({"sparse fwd+bwd": sparse, "dense fwd+bwd": dense}, args.warmup, args.reps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-steps", action="store_true", help="only the layer comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    med = statistics.median
    print(f"ViT-B/16 shapes, random init, CPU, {args.threads} threads, batch {args.batch}, 224 px, "
          f"median of {args.reps} (after {args.warmup} warm-up)")
    layer = bench_layer(args)
    for key, values in layer.items():
        print(f"  embedding MoE {key:15s} {med(values) * 1e3:9.1f} ms")
    for phase in ("fwd", "fwd+bwd"):
        ratio = med(layer[f"dense {phase}"]) / med(layer[f"sparse {phase}"])
        print(f"  sparse MoE is {ratio:.2f}x faster than dense all-experts ({phase}; target >= 3x)")
    if args.skip_steps:
        return
    clip_t, moe_t = bench_steps(args)
    print(f"  train step fairclip {med(clip_t):.2f} s (min {min(clip_t):.2f})   fairmoe {med(moe_t):.2f} s "
          f"(min {min(moe_t):.2f})   (3 group batches of {args.batch}, Adam)")
    print(f"  fairmoe / fairclip = {med(moe_t) / med(clip_t):.2f}x median, {min(moe_t) / min(clip_t):.2f}x min "
          "(target <= 1.2x)")


if __name__ == "__main__":
    main()

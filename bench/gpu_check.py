"""Does bf16 move the reported numbers? One train step per method and zero-shot scoring, bf16 against fp32.

For each method: the fairness-loss terms of one train step computed under bf16 autocast and in fp32 (same weights,
same batch), and the zero-shot scores of a few hundred samples scored both ways, with the AUC, DPD and EOD each gives.
With fairbench's fp32 islands the differences should be at bf16 encoder noise, not at the size of the paper's gaps.

    PYTHONPATH=. python bench/gpu_check.py                  # CUDA: b16, random init (no download)
    PYTHONPATH=. python bench/gpu_check.py --arch tiny      # anywhere; CPU autocast bf16 when there is no GPU

Random-init weights measure precision, not accuracy: the scores are near 0.5, which is the hard case for DPD/EOD.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

METHODS = ("clip", "fairclip", "fairmoe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=None, help="default: b16 on CUDA, tiny on CPU")
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    from fairbench.datasets.fairvlmed import FairVLMed
    from fairbench.method import Batch
    from fairbench.metrics import evaluate
    from fairbench.models import create_backbone
    from fairbench.registry import get_method, load_plugins
    from fairbench.training.zeroshot import zero_shot_scores

    load_plugins()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arch = args.arch or ("b16" if device.type == "cuda" else "tiny")
    print(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), arch {arch}, "
          f"torch {torch.__version__}, random-init weights")
    gen = torch.Generator().manual_seed(0)
    probe = create_backbone(arch, pretrained=None)
    size = probe.image_size
    n, b = args.samples, args.batch
    images = torch.randint(0, 256, (n, 1, size, size), generator=gen, dtype=torch.uint8).expand(-1, 3, -1, -1)
    labels = torch.randint(0, 2, (n,), generator=gen)
    race = torch.randint(0, 3, (n,), generator=gen)
    mean = torch.tensor(probe.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(probe.std, device=device).view(1, 3, 1, 1)
    normalize = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    tokens = probe.tokenize([f"a note {i} about {'glaucoma' if y else 'non-glaucoma'}" for i, y in
                             enumerate(labels.tolist())]).to(device)

    def batch_of(idx: torch.Tensor) -> Batch:
        return Batch(images=normalize(images[idx].to(device)), tokens=tokens[idx.to(device)],
                     labels=labels[idx].to(device), groups=race[idx].to(device))

    print(f"{'method':10} {'term':14} {'fp32':>12} {'bf16':>12} {'rel.diff':>9}")
    for name in METHODS:
        cls = get_method(name)
        method = cls(cls.Settings(), "race" if cls.uses_attribute else None, 3)
        torch.manual_seed(0)
        model = method.build(create_backbone(arch, pretrained=None).model).to(device).train()
        idx = torch.arange(b)
        groups = {g: batch_of(torch.nonzero(race == g).flatten()[:b]) for g in range(3)} if cls.group_batches else {}
        terms = {}
        for mode in ("fp32", "bf16"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                out = method.loss_terms(model, batch_of(idx), groups)
            terms[mode] = {k: float(v.detach().float()) for k, v in out.items()}
        for term in terms["fp32"]:
            a, c = terms["fp32"][term], terms["bf16"][term]
            rel = abs(a - c) / max(abs(a), 1e-30)
            print(f"{name:10} {term:14} {a:12.5g} {c:12.5g} {rel:9.2e}")
        scores = {}
        for mode in ("fp32", "bf16"):
            scores[mode] = zero_shot_scores(model, images, probe.tokenize, FairVLMed.prompts, normalize, device,
                                            batch_size=128, autocast=mode == "bf16")
        suites = {m: evaluate(labels.numpy(), s, {"race": race.numpy()}) for m, s in scores.items()}
        diff = np.abs(scores["fp32"] - scores["bf16"])
        print(f"{name:10} scores: max |Δp| {diff.max():.2e}, distinct {len(np.unique(scores['fp32']))} (fp32) vs "
              f"{len(np.unique(scores['bf16']))} (bf16) of {n}")
        for key in ("auc",):
            print(f"{name:10} {key:14} {suites['fp32'].auc:12.5f} {suites['bf16'].auc:12.5f}")
        for key in ("es_auc", "dpd", "eod"):
            a = getattr(suites["fp32"].attributes["race"], key)
            c = getattr(suites["bf16"].attributes["race"], key)
            print(f"{name:10} race {key:9} {a:12.5f} {c:12.5f} {abs(a - c):9.2e}")


if __name__ == "__main__":
    main()

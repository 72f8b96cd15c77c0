"""What each loss term weighs at step 1 under `--protocol fairclip`, on the tiny model and the synthetic FairVLMed.

1. FairCLIP's published form (λ 1e-6, blur 1e-6): its Sinkhorn term against the contrastive loss, as values and as
   gradient norms on the trainable parameters (the two towers).
2. The Sinkhorn's gradient with respect to the batch's similarity values in fp32, divided by the exact one (fp64):
   at blur 1e-6 (ε = 1e-12) fp32 `logsumexp` ties make it an integer multiple per sample; the multiples of
   fairbench's Sinkhorn and geomloss's, side by side.
3. Fair-MoE's terms, paper and release forms: each term's share of the gradient on all trainable parameters and on
   the gates (`fairbench.training.probe`, as history.json records it).

The batch is the trainer's first one for seed 0 (race, group batches as FairCLIP's loaders draw them). Nothing here is
timed; the numbers depend on the data and on the model's start (`--pretrained default`: tiny's cached pretraining).

    PYTHONPATH=. python bench/bench_loss_terms.py [--pretrained default|none] [--data PATH]
"""

from __future__ import annotations

import argparse
import collections
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def first_batch(data, normalize, n_groups: int, seed: int = 0, batch_size: int = 32, group_batch_size: int = 32):
    """The trainer's step-1 batch and group batches for `seed` under the fairclip protocol (loader sampling)."""
    from fairbench.training.feeder import Feeder
    from fairbench.training.trainer import EpochPlan, GroupSampler

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(data.labels.shape[0], generator=generator)
    sampler = GroupSampler(data.groups, n_groups, group_batch_size, generator, mode="loader")
    plan = EpochPlan(order, 1, batch_size, sampler, Feeder(data, torch.device("cpu"), normalize))
    return plan.batches(0)


def load(args):
    from fairbench.models.backbones import create_backbone, input_spec
    from fairbench.registry import get_dataset, load_builtin_methods
    from fairbench.training.feeder import SplitData

    load_builtin_methods()
    spec = get_dataset("fairvlmed")()
    root = spec.resolve(args.data)
    inputs = input_spec("tiny")
    loaded = spec.load(root, image_size=inputs.image_size, tokenize=inputs.tokenize,
                       tokenizer_key=inputs.tokenizer_key, text_source=spec.check_text_source(None))
    weights = None
    if args.pretrained == "default":
        from fairbench.training.pretrain import ensure_pretrained, pretraining_target

        weights = ensure_pretrained(pretraining_target("tiny", "fairvlmed"))["path"]
    torch.manual_seed(0)
    backbone = create_backbone("tiny", pretrained=weights)
    train = loaded.train
    data = SplitData(images=train.images, tokens=train.tokens, labels=train.labels, groups=train.attributes["race"])
    return backbone, data, len(spec.attributes["race"]), str(root)


def trainable(model):
    from fairbench.training.settings import resolve_train_settings
    from fairbench.training.trainer import _unfrozen

    frozen = resolve_train_settings("tiny", "fairclip").frozen  # the towers-only rule of a fairclip-protocol job
    return _unfrozen((p for p in model.parameters() if p.requires_grad), model, frozen)


def at_clip_scale(model):
    """A copy of `model` with CLIP's logit scale, 100 (OpenAI's ViT-B/16 and ViT-L/14 carry it; both protocols
    freeze it): the published form's similarities grow with its square, tiny's own scale is far smaller."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(100.0)))
    return model


def fairclip_dominance(model, batch, groups, n_groups: int) -> None:
    from fairbench.registry import get_method
    from fairbench.training.probe import gradient_norms

    method = get_method("fairclip")(None, "race", n_groups)
    terms = {k: v for k, v in method.loss_terms(model, batch, groups).items()}
    norms = gradient_norms(terms, {"all": trainable(model)})
    values = {k: float(v.detach()) for k, v in terms.items()}
    ratio = values["sinkhorn"] / values["contrastive"]
    grad_ratio = norms["sinkhorn"]["all"] / norms["contrastive"]["all"]
    print(f"fairclip published, λ 1e-6, blur 1e-6, logit scale {float(model.logit_scale.detach().exp()):.1f}: "
          f"contrastive {values['contrastive']:.4g}, λ·Sinkhorn {values['sinkhorn']:.4g}")
    print(f"  dominance at step 1: λ·Sinkhorn / contrastive = {ratio:.4g}; gradient norm ratio = {grad_ratio:.4g}")


def sinkhorn_multiples(model, batch, groups) -> None:
    import geomloss
    from fairbench_methods.fairclip import pair_similarities

    from fairbench.method import encode_batch
    from fairbench.training.losses import sinkhorn_distance

    with torch.no_grad():
        x = pair_similarities(model, *encode_batch(model, batch), "published", group_side=False)
        ys = [pair_similarities(model, *encode_batch(model, gb), "published", group_side=True)
              for gb in groups.values()]
    implementations = {"fairbench": lambda a, b: sinkhorn_distance(a, b, blur=1e-6),
                       "geomloss": geomloss.SamplesLoss("sinkhorn", p=2, blur=1e-6)}
    print(f"Sinkhorn gradient w.r.t. the batch's {x.numel()} similarity values (range {float(x.min()):.4g} to "
          f"{float(x.max()):.4g}), fp32 / fp64, per group batch:")
    for g, y in enumerate(ys):
        multiples, exact = {}, None
        for name, fn in implementations.items():
            grads = {}
            for dtype in (torch.float32, torch.float64):
                xx = x.detach().to(dtype).requires_grad_(True)
                (grads[dtype],) = torch.autograd.grad(fn(xx[:, None], y.to(dtype)[:, None]), [xx])
            exact = grads[torch.float64]
            ratio = grads[torch.float32].double() / exact
            multiples[name] = ratio
        line = []
        for name, ratio in multiples.items():
            rounded = ratio.round()
            counts = dict(sorted(collections.Counter(int(v) for v in rounded.tolist()).items()))
            line.append(f"{name} multiples {counts} (max |ratio − integer| {float((ratio - rounded).abs().max()):.1g})")
        differ = int((multiples["fairbench"].round() != multiples["geomloss"].round()).sum())
        print(f"  group {g}: " + "; ".join(line) + f"; samples whose multiple differs: {differ}")


def fairmoe_shares(backbone, batch, groups, n_groups: int) -> None:
    from fairbench.registry import get_method
    from fairbench.training.probe import gradient_norms, gradient_shares
    from fairbench.training.trainer import _probe_sets

    cls = get_method("fairmoe")
    for form in ("paper", "release"):
        torch.manual_seed(0)
        method = cls(cls.settings_from({"moe.form": form}), "race", n_groups)
        model = method.build(copy.deepcopy(backbone.model))
        params = [p for p in trainable(model) if id(p) in {id(q) for q in method.trainable_parameters(model)}]
        model.eval()
        terms = method.loss_terms(model, batch, groups)
        shares = gradient_shares(gradient_norms(terms, _probe_sets(method, model, params)))
        fol = method.fol
        print(f"fairmoe moe.form={form} (FOL {fol.form}, weights {fol.weights()}): share of the gradient")
        for term, per_set in shares.items():
            print(f"  {term:12s} all {per_set['all']:.3g}   gates {per_set.get('gates', float('nan')):.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", choices=("default", "none"), default="default")
    parser.add_argument("--data", default=None, help="a FairVLMed folder (default: the synthetic one)")
    args = parser.parse_args()
    from fairbench.training.precision import native_numerics

    backbone, data, n_groups, root = load(args)
    print(f"tiny ({'pretrained' if args.pretrained == 'default' else 'random init'}) on {root}, torch "
          f"{torch.__version__}, fp32 on CPU")
    batch, groups = first_batch(data, backbone.normalizer(), n_groups)
    print(f"step-1 batch {batch.labels.numel()}, group batches {[gb.labels.numel() for gb in groups.values()]}")
    with native_numerics(True):  # the fairclip protocol's numerics (fp32 on a CPU, as released)
        for model in (backbone.model, at_clip_scale(backbone.model)):
            fairclip_dominance(model, batch, groups, n_groups)
            sinkhorn_multiples(model, batch, groups)
        fairmoe_shares(backbone, batch, groups, n_groups)


if __name__ == "__main__":
    main()

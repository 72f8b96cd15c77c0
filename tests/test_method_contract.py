"""Every registered method with its own code builds on `tiny`, trains two epochs of one step, changes its model
and scores samples apart.

Settings-only variants (Fair-MoE's ablations: the same class as a registered parent, other Settings defaults)
train once, in test_cli_run's study test, which checks their loss terms and MoE layers.
"""

import math

import numpy as np
import pytest
import torch

from fairbench.method import Method
from fairbench.registry import get_method, list_methods, load_plugins
from fairbench.training.trainer import SplitData, TrainSettings, train

load_plugins()


def settings_variant(cls: type[Method]) -> bool:
    """A registered subclass of a registered method that overrides nothing but its Settings."""
    parent = cls.__mro__[1]
    own = {k for k in vars(cls) if not k.startswith("__")} - {"Settings", "name", "description", "aliases"}
    return parent is not Method and bool(parent.name) and not own


def own_fit(cls: type[Method]) -> bool:
    """A mode that does not fine-tune (zero-shot, linear probe): it overrides `fit` instead of the trainer's loop."""
    return cls.fit is not Method.fit


CONTRACT_METHODS = [n for n in list_methods() if not settings_variant(get_method(n)) and not own_fit(get_method(n))]
FIT_METHODS = [n for n in list_methods() if not settings_variant(get_method(n)) and own_fit(get_method(n))]


def test_the_contract_covers_each_method_class_and_skips_only_settings_variants():
    assert {"clip", "fairclip", "fairmoe"} <= set(CONTRACT_METHODS)
    assert {"zeroshot", "linear-probe"} <= set(FIT_METHODS)
    assert "fairmoe-no-fei" not in CONTRACT_METHODS and settings_variant(get_method("fairclip-fom"))


@pytest.fixture(scope="module")
def data(dataset):
    from fairbench.datasets.fairvlmed.load import load_fairvlmed
    from fairbench.models import create_backbone

    bb = create_backbone("tiny", pretrained=None)
    return load_fairvlmed(dataset, image_size=bb.image_size, tokenize=bb.tokenize, tokenizer_key=bb.tokenizer_key)


def _built(name: str, **settings: int):
    """Method `name` (on race where it uses an attribute) built on a seeded random tiny backbone, with the
    parameters it starts from."""
    from fairbench.datasets.fairvlmed import FairVLMed
    from fairbench.models import create_backbone

    cls = get_method(name)
    attribute = "race" if cls.uses_attribute else None
    method = cls(cls.Settings(), attribute, len(FairVLMed.attributes["race"]) if attribute else 0)
    for key, value in settings.items():
        if hasattr(method.settings, key):
            setattr(method.settings, key, value)
    torch.manual_seed(0)
    bb = create_backbone("tiny", pretrained=None)
    model = method.build(bb.model)
    return method, attribute, bb, model, {k: p.detach().clone() for k, p in model.named_parameters()}


def _normalisation(bb):
    return torch.tensor(bb.mean).view(1, 3, 1, 1), torch.tensor(bb.std).view(1, 3, 1, 1)


@pytest.mark.parametrize("name", CONTRACT_METHODS)
@pytest.mark.slow
def test_method_trains_two_epochs_and_scores(name, data):
    from fairbench.datasets import normalize_images
    from fairbench.datasets.fairvlmed import FairVLMed
    from fairbench.metrics import overall_auc as _auc

    method, attribute, bb, model, initial = _built(name)
    mean, std = _normalisation(bb)
    seen_terms = []
    original = method.loss_terms

    def recording(model, batch, groups):
        terms = original(model, batch, groups)
        seen_terms.append({k: float(v.detach()) for k, v in terms.items()})
        if type(method).group_batches:
            assert set(groups) <= {0, 1, 2} and groups, "group batches must be supplied per group"
            for g, gb in groups.items():
                assert bool((gb.groups == g).all())
        return terms

    method.loss_terms = recording

    def split(s):
        return SplitData(s.images, s.tokens, s.labels, s.attributes[attribute] if attribute else None)

    settings = TrainSettings(epochs=2, batch_size=16, optimizer="adamw", lr=1e-3, betas=(0.9, 0.98),
                             max_steps_per_epoch=1, eval_batch_size=64)
    out = train(method, model, settings, train_data=split(data.train), val_data=split(data.val),
                test_data=split(data.test), normalize=lambda x: normalize_images(x, mean, std),
                tokenize=bb.tokenize, seed=0, device=torch.device("cpu"), auc=_auc, prompts=FairVLMed.prompts)
    assert len(seen_terms) == 4  # two steps, each after the gradient probe's call at its epoch's start
    assert all(set(h["grad_norms"]) == set(seen_terms[0]) for h in out.history)
    for terms in seen_terms:
        assert terms and all(isinstance(k, str) and k for k in terms)
        assert all(math.isfinite(v) for v in terms.values()), terms
    changed = [k for k, p in model.named_parameters() if not torch.equal(p.detach(), initial[k])]
    assert changed, "training left every parameter as it was"
    assert out.test_scores.shape == (data.test.labels.shape[0],)
    assert out.val_scores.shape == (data.val.labels.shape[0],)
    for scores in (out.test_scores, out.val_scores):
        assert np.isfinite(scores).all() and np.unique(scores).size > scores.size // 2  # samples scored apart
    assert len(out.history) == 2
    assert out.best_epoch == int(np.argmax([h["val_auc"] for h in out.history]))


@pytest.mark.parametrize("name", FIT_METHODS)
@pytest.mark.slow
def test_a_mode_with_its_own_fit_scores_samples_apart_and_leaves_the_model_as_loaded(name, data, tmp_path):
    """The contract of `Method.fit`: val and test scores for every sample, in [0, 1], told apart; the backbone is
    not changed (these modes train no backbone parameter); what it trained is counted."""
    from fairbench.datasets import normalize_images
    from fairbench.datasets.fairvlmed import FairVLMed
    from fairbench.metrics import overall_auc as _auc
    from fairbench.training.context import FitContext

    method, attribute, bb, model, initial = _built(name, probe_epochs=20)
    mean, std = _normalisation(bb)

    def split(s):
        return SplitData(s.images, s.tokens, s.labels, s.attributes[attribute] if attribute else None)

    context = FitContext(settings=TrainSettings(eval_batch_size=64), train=split(data.train), val=split(data.val),
                         test=split(data.test), normalize=lambda x: normalize_images(x, mean, std),
                         tokenize=bb.tokenize, prompts=FairVLMed.prompts, device=torch.device("cpu"), auc=_auc,
                         seed=0, data_key="contract", cache_dir=tmp_path)
    out = method.fit(model, context)
    assert out.test_scores.shape == (data.test.labels.shape[0],)
    assert out.val_scores.shape == (data.val.labels.shape[0],)
    for scores in (out.test_scores, out.val_scores):
        assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all()
        assert np.unique(scores).size > scores.size // 2  # samples scored apart
    assert all(torch.equal(p.detach(), initial[k]) for k, p in model.named_parameters())
    assert isinstance(out.trainable_parameters, int) and out.trainable_parameters >= 0

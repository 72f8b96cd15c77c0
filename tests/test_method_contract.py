"""Every registered method builds on `tiny`, trains two steps on synthetic data, and predicts probabilities."""

import math

import numpy as np
import pytest
import torch

from fairbench.registry import get_method, list_methods, load_plugins
from fairbench.train import SplitData, TrainSettings, train
from tests.helpers import small_synthetic

load_plugins()
ALL_METHODS = list_methods()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fairbench.datasets.fairvlmed.load import load_fairvlmed
    from fairbench.models import create_backbone

    bb = create_backbone("tiny", pretrained=None)
    root = small_synthetic(tmp_path_factory.mktemp("contract"))
    return load_fairvlmed(root, image_size=bb.image_size, tokenize=bb.tokenize, tokenizer_key=bb.tokenizer_key)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_method_trains_two_steps_and_scores(name, data):
    from fairbench.datasets import normalize_images
    from fairbench.datasets.fairvlmed import FairVLMed
    from fairbench.execute import _auc
    from fairbench.models import create_backbone

    cls = get_method(name)
    attribute = "race" if cls.uses_attribute else None
    method = cls(cls.Settings(), attribute, len(FairVLMed.attributes["race"]) if attribute else 0)
    torch.manual_seed(0)
    bb = create_backbone("tiny", pretrained=None)
    model = method.build(bb.model)
    mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.std).view(1, 3, 1, 1)
    seen_terms = []
    original = method.loss_terms

    def recording(model, batch, groups):
        terms = original(model, batch, groups)
        seen_terms.append({k: float(v.detach()) for k, v in terms.items()})
        if cls.group_batches:
            assert set(groups) <= {0, 1, 2} and groups, "group batches must be supplied per group"
            for g, gb in groups.items():
                assert bool((gb.groups == g).all())
        return terms

    method.loss_terms = recording

    def split(s):
        return SplitData(s.images, s.tokens, s.labels, s.attributes[attribute] if attribute else None)

    settings = TrainSettings(epochs=1, batch_size=16, optimizer="adamw", lr=1e-3, betas=(0.9, 0.98),
                             max_steps_per_epoch=2, eval_batch_size=64)
    out = train(method, model, settings, train_data=split(data.train), val_data=split(data.val),
                test_data=split(data.test), normalize=lambda x: normalize_images(x, mean, std),
                tokenize=bb.tokenize, seed=0, device=torch.device("cpu"), auc=_auc, prompts=FairVLMed.prompts)
    assert len(seen_terms) == 2
    for terms in seen_terms:
        assert terms and all(isinstance(k, str) and k for k in terms)
        assert all(math.isfinite(v) for v in terms.values()), terms
    assert out.test_scores.shape == (data.test.labels.shape[0],)
    assert out.val_scores.shape == (data.val.labels.shape[0],)
    for scores in (out.test_scores, out.val_scores):
        assert np.all((scores >= 0) & (scores <= 1))
    assert out.best_epoch == 0 and len(out.history) == 1

"""fp32 islands: reported scores and fairness losses under bf16 autocast equal the fp32 path (CPU autocast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fairbench.metrics import evaluate
from fairbench.training.losses import sinkhorn_distance
from fairbench.training.zeroshot import zero_shot_scores


class IntegerCLIP(nn.Module):
    """Encoders whose bf16 outputs are exact (small integers), so only the scoring head can differ by precision;
    they record the dtype they ran in."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.image_proj = nn.Linear(16, 8, bias=False)
        self.text_table = nn.Embedding(4, 8)
        with torch.no_grad():
            self.image_proj.weight.copy_(torch.randint(-1, 2, (8, 16), generator=gen).float())
            self.text_table.weight.copy_(torch.randint(-1, 2, (4, 8), generator=gen).float())
        self.dtypes: list[torch.dtype] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        out = self.image_proj(x.flatten(1)[:, :16])
        self.dtypes.append(out.dtype)
        return out

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_table(tokens[:, 0]) @ torch.eye(8)


def test_scores_under_bf16_autocast_equal_the_fp32_path():
    n = 2000
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 2, (n, 1, 4, 4), generator=gen, dtype=torch.uint8)
    model = IntegerCLIP()
    tokenize = lambda prompts: torch.tensor([[1], [2]])  # noqa: E731
    args = (model, images, tokenize, ("neg", "pos"), lambda x: x.float(), torch.device("cpu"))
    exact = zero_shot_scores(*args, batch_size=512, autocast=False)
    assert model.dtypes[-1] == torch.float32
    mixed = zero_shot_scores(*args, batch_size=512, autocast=True)
    assert model.dtypes[-1] == torch.bfloat16  # the encoders did run in bf16
    assert len(np.unique(mixed)) == len(np.unique(exact)) > 100  # no collapse beyond the true ties
    np.testing.assert_allclose(mixed, exact, rtol=1e-6, atol=1e-7)
    labels = (exact + 0.1 * torch.rand(n, generator=gen).numpy() > np.median(exact)).astype(int)
    groups = {"g": torch.randint(0, 3, (n,), generator=gen).numpy()}
    a, b = evaluate(labels, exact, groups), evaluate(labels, mixed, groups)
    assert abs(a.auc - b.auc) <= 1e-3
    for key in ("es_auc", "dpd", "eod"):
        assert abs(getattr(a.attributes["g"], key) - getattr(b.attributes["g"], key)) <= 1e-3, key


@pytest.mark.parametrize("blur,debias", [(1e-6, True), (1e-2, True), (0.1, False)])
def test_sinkhorn_under_autocast_equals_fp32(blur, debias):
    gen = torch.Generator().manual_seed(3)
    base_x = torch.rand(32, 1, generator=gen) * 40 + 10  # similarity-like values in the tens, as FairCLIP's
    base_y = torch.rand(32, 1, generator=gen) * 40 + 12

    def loss_and_grads(autocast: bool):
        x, y = base_x.clone().requires_grad_(True), base_y.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = sinkhorn_distance(x, y, blur=blur, debias=debias)
        gx, gy = torch.autograd.grad(value, [x, y])
        return value.detach(), gx, gy

    ref, mixed = loss_and_grads(False), loss_and_grads(True)
    assert mixed[0].dtype == torch.float32
    for r, m in zip(ref, mixed, strict=True):
        torch.testing.assert_close(m, r, rtol=1e-4, atol=1e-7)


def test_fairclip_similarities_leave_autocast():
    from fairbench.registry import load_plugins

    load_plugins()
    from fairbench_methods.fairclip import pair_similarities

    gen = torch.Generator().manual_seed(4)
    image = nn.functional.normalize(torch.randn(32, 64, generator=gen), dim=-1)
    text = nn.functional.normalize(torch.randn(32, 64, generator=gen), dim=-1)
    model = nn.Module()
    model.logit_scale = nn.Parameter(torch.tensor(4.6052))
    for form in ("published", "aligned"):
        ref = pair_similarities(model, image, text, form, group_side=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = pair_similarities(model, image.bfloat16(), text.bfloat16(), form, group_side=False)
        assert mixed.dtype == torch.float32
        exact_inputs = pair_similarities(model, image.bfloat16().float(), text.bfloat16().float(), form, False)
        torch.testing.assert_close(mixed, exact_inputs, rtol=1e-5, atol=1e-6)
        assert ref.shape == mixed.shape

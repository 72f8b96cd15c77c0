"""The Sinkhorn distance must agree with geomloss's SamplesLoss('sinkhorn', p=2), values and gradients."""

import pytest
import torch

from fairbench.losses import clip_contrastive_loss, sinkhorn_distance

geomloss = pytest.importorskip("geomloss")


@pytest.mark.parametrize("n,m,d,blur,debias", [
    (32, 8, 1, 1e-4, True),    # FairCLIP's shape: batch similarities vs one group's, 1-D, blur 1e-4
    (32, 32, 1, 0.05, True),
    (20, 7, 5, 0.01, True),
    (16, 24, 3, 0.1, False),
])
def test_sinkhorn_matches_geomloss(n, m, d, blur, debias):
    gen = torch.Generator().manual_seed(n * 100 + m)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64).requires_grad_(True)
    y = (torch.randn(m, d, generator=gen, dtype=torch.float64) * 1.5 + 0.3).requires_grad_(True)
    ref = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, debias=debias)(x, y)
    ours = sinkhorn_distance(x, y, blur=blur, debias=debias)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    g_ref = torch.autograd.grad(ref, [x, y])
    g_ours = torch.autograd.grad(ours, [x, y])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)


def test_sinkhorn_is_zero_for_identical_clouds_and_grows_with_shift():
    x = torch.linspace(-1, 1, 16)[:, None]
    assert sinkhorn_distance(x, x.clone(), blur=0.01).abs().item() < 1e-5
    near = sinkhorn_distance(x, x + 0.1, blur=0.01).item()
    far = sinkhorn_distance(x, x + 1.0, blur=0.01).item()
    # W2²/2 of a pure shift s is s²/2
    assert far == pytest.approx(0.5, rel=0.02)
    assert 0 < near < far


def test_contrastive_loss_matches_cross_entropy_loop():
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.t()
    expected = 0.0
    for i in range(6):  # row-wise and column-wise InfoNCE, written out
        expected += -torch.log_softmax(logits[i], 0)[i] / 12 - torch.log_softmax(logits[:, i], 0)[i] / 12
    assert clip_contrastive_loss(img, txt, scale).item() == pytest.approx(expected.item(), rel=1e-6)

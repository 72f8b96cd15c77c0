"""The Sinkhorn distance must agree with geomloss's SamplesLoss('sinkhorn', p=2), values and gradients."""

import pytest
import torch

from fairbench.training.losses import (
    annealing_length,
    annealing_schedule,
    clip_contrastive_loss,
    cloud_diameter,
    sinkhorn_distance,
)

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


def _clouds(spread: float, dtype=torch.float64, n: int = 32, m: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, generator=gen, dtype=dtype) * spread).requires_grad_(True)
    y = (torch.rand(m, 1, generator=gen, dtype=dtype) * spread + 0.1 * spread).requires_grad_(True)
    return x, y


# Diameters below blur (geomloss then anneals *up* from diameter^p), around 1, and FairCLIP's published scale.
@pytest.mark.parametrize("spread", [1e-7, 3e-5, 1e-2, 1.0, 3e4])
@pytest.mark.parametrize("blur", [1e-4, 1e-6])
@pytest.mark.parametrize("max_diameter", [None, 6.4e5])
def test_sinkhorn_equals_geomloss_at_every_diameter(spread, blur, max_diameter):
    x, y = _clouds(spread)
    ref = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur)(x, y)
    ours = sinkhorn_distance(x, y, blur=blur, max_diameter=max_diameter)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-300)
    for a, b in zip(torch.autograd.grad(ours, [x, y]), torch.autograd.grad(ref, [x, y]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-300)


@pytest.mark.parametrize("p,scaling", [(2, 0.5), (2, 0.9), (1, 0.5)])
def test_annealing_schedule_is_geomlosss_schedule_masked_into_a_fixed_length(p, scaling):
    from geomloss._legacy.sinkhorn_divergence import epsilon_schedule

    blur, bound = 1e-6, 6.4e5
    length = annealing_length(bound, blur, p, scaling)
    assert length == len(epsilon_schedule(p, bound, blur, scaling))
    # Random diameters plus exact step boundaries (blur·scaling^-k) and the bound itself.
    diameters = [*torch.logspace(-9, 5.8, 40, dtype=torch.float64).tolist(), blur * scaling**-7, blur, bound]
    for d in diameters:
        want = epsilon_schedule(p, d, blur, scaling)
        for max_iter in (200, 5):
            eps0, steps, active = annealing_schedule(torch.tensor(d, dtype=torch.float64), blur, p, scaling, length,
                                                     max_iter)
            assert steps.shape == (min(length, max_iter),) and bool(active[-1])
            assert not bool((active[1:].long() - active[:-1].long() < 0).any())  # the masked steps lead
            assert eps0.item() == pytest.approx(want[0], rel=1e-14)
            assert steps[active].tolist() == pytest.approx(want[:max_iter], rel=1e-13), d


def test_diameter_above_the_bound_anneals_from_the_bound():
    x, y = _clouds(10.0)
    bound = 2.0
    assert cloud_diameter(x, y).item() > bound
    ref = geomloss.SamplesLoss("sinkhorn", p=2, blur=1e-3, diameter=bound)(x, y)
    exact = geomloss.SamplesLoss("sinkhorn", p=2, blur=1e-3)(x, y)
    ours = sinkhorn_distance(x, y, blur=1e-3, max_diameter=bound)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    assert ours.item() != pytest.approx(exact.item(), rel=1e-3)  # so the bound is not silently ignored


def test_bounded_sinkhorn_never_reads_the_device(monkeypatch):
    x, y = _clouds(1.0, dtype=torch.float32)

    def host_read(*args, **kwargs):
        raise AssertionError("host read inside the Sinkhorn loss")

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy"):
            patch.setattr(torch.Tensor, name, host_read)
        loss = sinkhorn_distance(x, y, blur=1e-6, max_diameter=2.0)
        loss.backward()
        with pytest.raises(AssertionError, match="host read"):  # the unbounded form reads the diameter
            sinkhorn_distance(x, y, blur=1e-6)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("pairs", [0, 3])
def test_bounded_sinkhorn_compiles_to_one_graph(pairs):
    x, y = _clouds(1.0, dtype=torch.float32)
    if pairs:
        x, y = x.expand(pairs, -1, -1), torch.stack([y * (i + 1) for i in range(pairs)])
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: sinkhorn_distance(a, b, blur=1e-6, max_diameter=10.0), fullgraph=True,
                             backend="eager")
    got = compiled(x.detach(), y.detach())  # pair diameters ≈ 1 to 3.2
    torch.testing.assert_close(got, sinkhorn_distance(x, y, blur=1e-6).detach(), rtol=1e-6, atol=0)
    torch._dynamo.reset()
    unbounded = torch.compile(lambda a, b: sinkhorn_distance(a, b, blur=1e-6), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="(?i)data-dependent|graph break|Unsupported"):  # the host read breaks the graph
        unbounded(x.detach(), y.detach())
    torch._dynamo.reset()


@pytest.mark.parametrize("max_diameter", [None, 50.0])
@pytest.mark.parametrize("debias", [True, False])
def test_batched_pairs_equal_separate_calls(max_diameter, debias):
    # Three pairs with diameters 1e-7, 1 and 40: each keeps its own schedule in the shared loop.
    pairs = [_clouds(spread, seed=i) for i, spread in enumerate((1e-7, 1.0, 40.0))]
    xs = torch.stack([x.detach() for x, _ in pairs]).requires_grad_(True)
    ys = torch.stack([y.detach() for _, y in pairs]).requires_grad_(True)
    got = sinkhorn_distance(xs, ys, blur=1e-4, debias=debias, max_diameter=max_diameter)
    assert got.shape == (3,)
    got.sum().backward()
    for i, (x, y) in enumerate(pairs):
        want = sinkhorn_distance(x, y, blur=1e-4, debias=debias, max_diameter=max_diameter)
        ref = geomloss.SamplesLoss("sinkhorn", p=2, blur=1e-4, debias=debias)(x, y)
        assert got[i].item() == pytest.approx(want.item(), rel=1e-12, abs=1e-300)
        assert got[i].item() == pytest.approx(ref.item(), rel=1e-10, abs=1e-300)
        gx, gy = torch.autograd.grad(want, [x, y])
        torch.testing.assert_close(xs.grad[i], gx, rtol=1e-10, atol=1e-300)
        torch.testing.assert_close(ys.grad[i], gy, rtol=1e-10, atol=1e-300)


def test_degenerate_clouds_give_zero_or_nan_not_garbage():
    same = torch.ones(5, 1)
    assert sinkhorn_distance(same, same.clone(), blur=1e-6, max_diameter=2.0).item() == pytest.approx(0.0, abs=1e-12)
    assert sinkhorn_distance(same, same.clone(), blur=1e-6).item() == pytest.approx(0.0, abs=1e-12)
    nan = torch.tensor([[0.0], [float("nan")]])
    assert torch.isnan(sinkhorn_distance(nan, same, blur=1e-6, max_diameter=2.0))


def test_over_bound_receives_each_pairs_diameter_check():
    pairs = [_clouds(spread, seed=i) for i, spread in enumerate((1.0, 10.0, 1.5))]
    xs, ys = torch.stack([x.detach() for x, _ in pairs]), torch.stack([y.detach() for _, y in pairs])
    seen: list[torch.Tensor] = []
    sinkhorn_distance(xs, ys, blur=1e-3, max_diameter=2.0, over_bound=seen.append)
    sinkhorn_distance(pairs[1][0].detach(), pairs[1][1].detach(), blur=1e-3, max_diameter=2.0, over_bound=seen.append)
    assert [t.tolist() for t in seen] == [(cloud_diameter(xs, ys) > 2.0).tolist(), True] == [[False, True, False], True]
    sinkhorn_distance(xs, ys, blur=1e-3, over_bound=seen.append)  # unbounded: nothing can be over
    assert len(seen) == 2

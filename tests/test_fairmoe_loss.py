"""FOL against a plain-loop implementation of the paper's formula and of the released form."""

from __future__ import annotations

import pytest
import torch
from fairbench_methods.fairmoe.layers import GateRecord
from fairbench_methods.fairmoe.loss import fol_terms, group_variances, variance_gap

pytestmark = pytest.mark.usefixtures("one_thread")


def loop_fol(weights, groups, n_groups, valid, population, form="paper", lam=1.0):
    """Σ_p Σ_j (Var_all_j − Var_p_j)² with explicit loops; draws = (sample, real token) pairs."""
    if weights.dim() == 2:
        weights = weights[:, None, :]
        valid = None
    S, T, M = weights.shape

    def column(samples, j):
        return torch.stack([weights[s, t, j] for s in samples for t in range(T) if valid is None or valid[s, t]])

    everyone = [s for s in range(S) if population[s]]
    var_all = [torch.var(column(everyone, j), unbiased=False) for j in range(M)]
    total = torch.zeros(())
    for p in range(n_groups):
        members = [s for s in range(S) if int(groups[s]) == p]
        if not members or (valid is not None and not any(valid[s].any() for s in members)):
            continue
        var_p = [torch.var(column(members, j), unbiased=False) for j in range(M)]
        if form == "paper":
            total = total + sum((a - b) ** 2 for a, b in zip(var_all, var_p, strict=True))
        else:
            total = total + (sum(var_all) / M - sum(var_p) / M) ** 2
    if form == "released":
        total = total - lam * sum(var_all) / M
    return total


def random_case(seed: int, tokens: bool):
    g = torch.Generator().manual_seed(seed)
    S, T, M = 14, 6, 5
    shape = (S, T, M) if tokens else (S, M)
    weights = torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) > 0.5)  # sparse, like Ŵ
    groups = torch.tensor([0, 1, 0, -1, 1, 0, -1, 1, 0, 0, -1, 1, 0, 1])  # group 2 is empty; −1 unknown
    valid = torch.arange(T)[None] < torch.randint(1, T + 1, (S,), generator=g)[:, None]
    population = torch.arange(S) < 8
    return weights, groups, valid, population


@pytest.mark.parametrize("form", ["paper", "released"])
@pytest.mark.parametrize("tokens", [True, False])
def test_variance_gap_matches_loop(form, tokens):
    weights, groups, valid, population = random_case(0, tokens)
    got = variance_gap(weights, groups, 3, valid=valid if tokens else None, population=population, form=form,
                       released_lambda=0.7)
    want = loop_fol(weights, groups, 3, valid if tokens else None, population, form, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    assert got != 0


def test_unknown_group_affects_only_the_population_and_gradients_flow():
    weights, groups, valid, population = random_case(1, True)
    weights.requires_grad_(True)
    variance_gap(weights, groups, 3, valid=valid, population=population).backward()
    outsider = (groups == -1) & ~population  # unknown group, not in the population: no effect at all
    assert outsider.any() and weights.grad[outsider].abs().sum() == 0
    assert weights.grad[~outsider].abs().sum() > 0
    assert weights.grad[~valid].abs().sum() == 0  # padding tokens are not draws


def test_group_variances_counts_and_equal_groups_give_zero():
    w = torch.rand(6, 4, generator=torch.Generator().manual_seed(2))
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    var, n = group_variances(w, groups, 3)
    assert n.tolist() == [6, 3, 3, 0]
    torch.testing.assert_close(var[1], w[:3].var(0, unbiased=False))
    same = torch.cat([w[:3], w[:3]])  # both groups hold the same draws as the whole → every gap is 0
    assert variance_gap(same, groups, 3) < 1e-12


def test_fol_terms_assemble_batches_in_call_order():
    weights, groups, valid, _ = random_case(3, True)
    main, extra = slice(0, 8), slice(8, 14)
    records = {"image_embedding": [GateRecord(weights[main], valid[main]), GateRecord(weights[extra], valid[extra])],
               "text_feature": [GateRecord(weights[main, 0]), GateRecord(weights[extra, 0])]}
    codes = [groups[main], groups[extra]]
    terms = fol_terms(records, codes, 3, {"fol_ei": 2.0, "fol_ft": 0.5, "fol_et": 1.0})
    population = torch.arange(14) < 8
    assert set(terms) == {"fol_ei", "fol_ft"}  # layers without records or with weight 0 add no term
    torch.testing.assert_close(terms["fol_ei"], 2.0 * loop_fol(weights, groups, 3, valid, population))
    torch.testing.assert_close(terms["fol_ft"], 0.5 * loop_fol(weights[:, 0], groups, 3, None, population))
    assert fol_terms(records, codes, 3, {"fol_ei": 0.0}) == {}
    with pytest.raises(RuntimeError, match="encode each batch exactly once"):
        fol_terms(records, [groups], 3, {"fol_ei": 1.0})


def test_fol_terms_read_group_records_joined_or_one_per_batch_alike():
    """Group batches encoded in one forward leave one record for several codes tensors: same terms; only the
    population must be a record of its own, and the sample counts must add up."""
    weights, groups, valid, _ = random_case(4, True)
    main, g1, g2 = slice(0, 6), slice(6, 10), slice(10, 14)
    codes = [groups[main], groups[g1], groups[g2]]
    separate = {"image_embedding": [GateRecord(weights[s], valid[s]) for s in (main, g1, g2)]}
    joined = {"image_embedding": [GateRecord(weights[main], valid[main]),
                                  GateRecord(weights[6:14], valid[6:14])]}
    want = fol_terms(separate, codes, 3, {"fol_ei": 1.0})["fol_ei"]
    torch.testing.assert_close(fol_terms(joined, codes, 3, {"fol_ei": 1.0})["fol_ei"], want, rtol=0, atol=0)
    torch.testing.assert_close(want, loop_fol(weights, groups, 3, valid, torch.arange(14) < 6))
    population_joined = {"image_embedding": [GateRecord(weights[0:10], valid[0:10]),
                                             GateRecord(weights[g2], valid[g2])]}
    with pytest.raises(RuntimeError, match="encode each batch exactly once"):
        fol_terms(population_joined, codes, 3, {"fol_ei": 1.0})
    with pytest.raises(RuntimeError, match="encode each batch exactly once"):
        fol_terms(joined, codes[:2], 3, {"fol_ei": 1.0})


def test_bad_form_is_named():
    with pytest.raises(ValueError, match="FOL form"):
        variance_gap(torch.rand(3, 2), torch.zeros(3, dtype=torch.long), 1, form="loop")


@pytest.mark.parametrize("form", ["paper", "released"])
def test_fol_under_bf16_autocast_equals_fp32(form):
    """FOL's statistics leave autocast (fairbench.training.precision): value and gradients equal the fp32 path."""
    base, groups, valid, population = random_case(3, tokens=True)

    def value_and_grad(autocast: bool):
        weights = base.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = variance_gap(weights, groups, 3, valid=valid, population=population, form=form)
        (grad,) = torch.autograd.grad(value, [weights])
        return value.detach(), grad

    (v32, g32), (vmix, gmix) = value_and_grad(False), value_and_grad(True)
    assert vmix.dtype == torch.float32
    torch.testing.assert_close(vmix, v32, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(gmix, g32, rtol=1e-4, atol=1e-9)

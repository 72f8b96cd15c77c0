"""FOL against a plain-loop implementation of the paper's formula and of the released form."""

from __future__ import annotations

import pytest
import torch
from fairbench_methods.fairmoe.layers import GateRecord
from fairbench_methods.fairmoe.loss import fol_terms, group_variances, variance_gap

pytestmark = pytest.mark.usefixtures("one_thread")


def loop_fol(weights, groups, n_groups, valid, population, form="paper", lam=1.0, unbiased=False):
    """Σ_p Σ_j (Var_all_j − Var_p_j)² with explicit loops; draws = (sample, real token) pairs."""
    if weights.dim() == 2:
        weights = weights[:, None, :]
        valid = None
    S, T, M = weights.shape

    def column(samples, j):
        return torch.stack([weights[s, t, j] for s in samples for t in range(T) if valid is None or valid[s, t]])

    def var(samples, j):
        values = column(samples, j)
        return torch.var(values, unbiased=unbiased) if len(values) > 1 or not unbiased else values.sum() * 0

    everyone = [s for s in range(S) if population[s]]
    var_all = [var(everyone, j) for j in range(M)]
    total = torch.zeros(())
    for p in range(n_groups):
        members = [s for s in range(S) if int(groups[s]) == p]
        if not members or (valid is not None and not any(valid[s].any() for s in members)):
            continue
        var_p = [var(members, j) for j in range(M)]
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
@pytest.mark.parametrize("unbiased", [False, True])
def test_variance_gap_matches_loop(form, tokens, unbiased):
    weights, groups, valid, population = random_case(0, tokens)
    got = variance_gap(weights, groups, 3, valid=valid if tokens else None, population=population, form=form,
                       released_lambda=0.7, unbiased=unbiased)
    want = loop_fol(weights, groups, 3, valid if tokens else None, population, form, 0.7, unbiased)
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
    drawn = torch.where(population, -1, groups)  # group p's sample: its own batch only (the paper's O_N|p)
    assert set(terms) == {"fol_ei", "fol_ft"}  # layers without records or with weight 0 add no term
    torch.testing.assert_close(terms["fol_ei"], 2.0 * loop_fol(weights, drawn, 3, valid, population))
    torch.testing.assert_close(terms["fol_ft"], 0.5 * loop_fol(weights[:, 0], drawn, 3, None, population))
    pooled = fol_terms(records, codes, 3, {"fol_ei": 2.0}, group_sample="pooled")  # v0.2's reading, a setting
    torch.testing.assert_close(pooled["fol_ei"], 2.0 * loop_fol(weights, groups, 3, valid, population))
    assert not torch.allclose(pooled["fol_ei"], terms["fol_ei"])
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
    population = torch.arange(14) < 6
    torch.testing.assert_close(want, loop_fol(weights, torch.where(population, -1, groups), 3, valid, population))
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


# -- the paper's formula and the release's, on hand-made gate matrices, computed with the standard library

MAIN = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.0, 0.5]]  # O_N: 4 pairs × 3 experts
GROUP_0 = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.9, 0.05, 0.05]]  # O_N|0: the pairs drawn from group 0
GROUP_1 = [[0.1, 0.1, 0.8], [0.4, 0.4, 0.2], [0.3, 0.6, 0.1]]  # O_N|1
MAIN_GROUPS = [0, 1, 1, -1]  # the main batch's own members of each group


def _records(main, *groups):
    return {"image_feature": [GateRecord(torch.tensor(main, dtype=torch.float64))]
            + [GateRecord(torch.tensor(g, dtype=torch.float64)) for g in groups]}


def _codes(*groups):
    return [torch.tensor(MAIN_GROUPS)] + [torch.full((len(g),), p) for p, g in enumerate(groups)]


def _column(rows, j):
    return [row[j] for row in rows]


def test_paper_fol_is_the_papers_formula_on_a_hand_made_gate_matrix():
    """The paper, §3.2, the formula of F_EI (F_FI alike): Σ_p Σ_j (Var(O_N)_j − Var(O_N|p)_j)², O_N the gate
    weights of the N pairs sampled from the whole dataset, O_N|p those of N pairs sampled from group p."""
    from statistics import pvariance

    want = sum((pvariance(_column(MAIN, j)) - pvariance(_column(g, j))) ** 2
               for g in (GROUP_0, GROUP_1) for j in range(3))
    got = fol_terms(_records(MAIN, GROUP_0, GROUP_1), _codes(GROUP_0, GROUP_1), 2, {"fol_fi": 1.0})["fol_fi"]
    assert float(got) == pytest.approx(want, rel=1e-12)
    # pooling the main batch's members of p into O_N|p (a setting now, v0.2's default) is another number
    pooled = fol_terms(_records(MAIN, GROUP_0, GROUP_1), _codes(GROUP_0, GROUP_1), 2, {"fol_fi": 1.0},
                       group_sample="pooled")["fol_fi"]
    want_pooled = sum((pvariance(_column(MAIN, j)) - pvariance(_column(g + [MAIN[i] for i in members], j))) ** 2
                      for g, members in ((GROUP_0, [0]), (GROUP_1, [1, 2])) for j in range(3))
    assert float(pooled) == pytest.approx(want_pooled, rel=1e-12)
    assert want_pooled / want - 1 == pytest.approx(-0.313, abs=1e-3)  # the README's "−31 %"


def test_released_fol_is_the_release_formula_on_a_hand_made_gate_matrix():
    """FairMoEfinetune.py lines 330–339 and 358–367, by hand: s = mean over experts of the unbiased variance of
    the main batch's weights, s_p the same for group p's batch; the loss adds −λ·s once and λ·(s_p − s)² per group.
    For an embedding MoE every token position of every sample is one row (`view(-1, NumExp)`)."""
    from statistics import mean, variance

    lam = 1e-4
    spread = lambda rows: mean(variance(_column(rows, j)) for j in range(3))  # noqa: E731
    s = spread(MAIN)
    want = lam * (sum((spread(g) - s) ** 2 for g in (GROUP_0, GROUP_1)) - s)
    got = fol_terms(_records(MAIN, GROUP_0, GROUP_1), _codes(GROUP_0, GROUP_1), 2, {"fol_fi": lam},
                    form="released", unbiased=True)["fol_fi"]
    assert float(got) == pytest.approx(want, rel=1e-12)

    # tokens: 2 samples × 2 positions per batch, every position a draw (the release routes padding too)
    main_tokens = [MAIN[:2], MAIN[2:]]
    group_tokens = [[GROUP_0[:2], GROUP_1[:2]], [GROUP_0[1:], GROUP_1[1:]]]
    records = {"text_embedding": [GateRecord(torch.tensor(main_tokens, dtype=torch.float64),
                                             torch.ones(2, 2, dtype=torch.bool))]
               + [GateRecord(torch.tensor(g, dtype=torch.float64), torch.ones(2, 2, dtype=torch.bool))
                  for g in group_tokens]}
    codes = [torch.tensor([0, 1]), torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.long)]
    s = spread(MAIN)
    want = lam * (sum((spread(rows[0] + rows[1]) - s) ** 2 for rows in group_tokens) - s)
    got = fol_terms(records, codes, 2, {"fol_et": lam}, form="released", unbiased=True)["fol_et"]
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_fol_settings_follow_the_moe_form_unless_set():
    from fairbench_methods.fairmoe.loss import FOLConfig

    paper, release = FOLConfig().resolved("paper"), FOLConfig().resolved("release")
    assert (paper.form, paper.weights(), paper.unbiased, paper.group_sample) == (
        "paper", {"fol_ei": 1.0, "fol_et": 1.0, "fol_fi": 1.0, "fol_ft": 1.0}, False, "drawn")
    assert (release.form, release.weights(), release.unbiased, release.group_sample) == (
        "released", {"fol_ei": 0.0, "fol_et": 1e-4, "fol_fi": 0.0, "fol_ft": 1e-4}, True, "drawn")
    v01 = FOLConfig().resolved("v0.1")
    assert (v01.form, v01.group_sample, v01.unbiased) == ("paper", "pooled", False)  # as v0.1 computed it
    mixed = FOLConfig(form="paper", et="0.5", unbiased="true").resolved("release")  # explicit settings win
    assert (mixed.form, mixed.et, mixed.ei, mixed.unbiased) == ("paper", 0.5, 1.0, True)
    from fairbench.method import SettingsError

    with pytest.raises(SettingsError, match=r"fol\.group_sample must be one of drawn, pooled \(got 'all'\)"):
        FOLConfig(group_sample="all")

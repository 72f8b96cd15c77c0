"""The report/table tests' reference metric suite (tests/helpers.py: sklearn AUC, per-group rates in plain numpy)
agrees with fairlearn, so the fake result folders they build carry correct numbers."""

from __future__ import annotations

from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from tests.helpers import GROUP_NAMES, make_scores, population, reference_suite


def test_reference_suite_matches_fairlearn():
    pop = population()
    scores = make_scores(pop, 1.0, seed=5)
    suite = reference_suite(pop["label"], scores, {a: pop[a] for a in GROUP_NAMES})
    pred = (scores >= 0.5).astype(int)
    for attr in GROUP_NAMES:
        block = suite["attributes"][attr]
        kw = {"sensitive_features": pop[attr]}
        assert abs(block["dpd"] - demographic_parity_difference(pop["label"], pred, **kw)) < 1e-12
        assert abs(block["eod"] - equalized_odds_difference(pop["label"], pred, **kw)) < 1e-12

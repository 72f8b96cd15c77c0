"""`--select dto`: MEDFAIR's distance to optimal over the epochs' (validation AUC, worst-group validation AUC), against
the formula written out, in the trainer on a scripted history, and across a resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fairbench.selection import EpochView, distance_to_optimal, get_select_rule, worst_group_auc
from tests.helpers import toy_train


def dto_loop(points: list[tuple[float, float]]) -> int:
    """The formula: divide each column by its best over the candidates, pick the smallest Euclidean distance to
    (1, 1); ties to the first (np.argmin in MEDFAIR's notebook)."""
    utopia = [max(p[j] for p in points) for j in range(2)]
    distances = [math.dist([p[j] / utopia[j] for j in range(2)], [1.0, 1.0]) for p in points]
    return distances.index(min(distances))


def test_distance_to_optimal_is_the_formula():
    rows = [(0.80, 0.70), (0.78, 0.75), (0.70, 0.76)]  # normalised distances 0.0789, 0.0283, 0.125
    keys = distance_to_optimal(np.array(rows))
    assert int(np.argmax(keys)) == dto_loop(rows) == 1
    assert -keys[1] == pytest.approx(math.dist((0.78 / 0.80, 0.75 / 0.76), (1, 1)), abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = [tuple(x) for x in rng.uniform(0.5, 0.95, size=(6, 2))]
        assert int(np.argmax(distance_to_optimal(np.array(pts)))) == dto_loop(pts)
    assert distance_to_optimal(np.array([[0.8, float("nan")], [0.7, 0.6]]))[0] == -np.inf


def test_worst_group_auc_reads_the_training_attribute_or_every_attribute():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.9, 0.2, 0.8, 0.6, 0.4, 0.3, 0.7])
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    a = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    by_g = min(roc_auc_score(y[g == k], s[g == k]) for k in (0, 1))
    by_a = min(roc_auc_score(y[a == k], s[a == k]) for k in (0, 1))
    assert worst_group_auc(EpochView("val", y, s, g, 0.8)) == pytest.approx(by_g, abs=1e-12)
    every = worst_group_auc(EpochView("val", y, s, None, 0.8, {"a": a, "b": g}))
    assert every == pytest.approx(min(by_a, by_g), abs=1e-12)
    assert math.isnan(worst_group_auc(EpochView("val", y, s, None, 0.8)))


@pytest.fixture()
def scripted_worst(monkeypatch):
    """Script the worst-group AUC per epoch (the toy split's own groups would give whatever the toy model learns)."""
    def install(values: list[float]):
        calls = iter(values)
        monkeypatch.setattr("fairbench.selection.worst_group_auc", lambda view: next(calls))
    return install


def test_trainer_picks_the_epoch_the_formula_picks(scripted_worst):
    val_auc = [0.80, 0.78, 0.70, 0.79]
    worst = [0.70, 0.75, 0.76, 0.60]
    scripted_worst(worst)
    outcome = toy_train("dto", 4, val_auc)
    assert outcome.best_epoch == dto_loop(list(zip(val_auc, worst, strict=True))) == 1
    assert [r["select_point"] for r in outcome.history] == [list(p) for p in zip(val_auc, worst, strict=True)]
    assert get_select_rule("dto").label == "DTO on validation (AUC, worst-group AUC)"


def test_a_later_epoch_moves_the_optimum_back_to_an_earlier_one(scripted_worst):
    """The utopia point moves as epochs arrive, so the choice can return to an epoch that was not the best when it
    ran: its weights must still be there (the final test scores come from them)."""
    val_auc = [0.80, 0.90, 0.60]
    worst = [0.70, 0.66, 0.90]
    scripted_worst(worst)
    outcome = toy_train("dto", 3, val_auc)
    assert dto_loop(list(zip(val_auc[:2], worst[:2], strict=True))) == 1  # after two epochs, epoch 1
    assert outcome.best_epoch == dto_loop(list(zip(val_auc, worst, strict=True))) == 0
    scripted_worst(worst[:1])
    first_only = toy_train("dto", 1, val_auc[:1])
    assert all(torch.equal(outcome.state_dict[k], first_only.state_dict[k]) for k in first_only.state_dict)
    assert np.array_equal(outcome.test_scores, first_only.test_scores)


def test_dto_resumes_to_the_same_choice(scripted_worst, tmp_path):
    from fairbench.runs.state import load_state, save_state

    val_auc = [0.80, 0.90, 0.60, 0.85]
    worst = [0.70, 0.66, 0.90, 0.55]
    scripted_worst(list(worst))
    reference = toy_train("dto", 4, val_auc)
    path = tmp_path / "train_state.pt"
    scripted_worst(worst[:2])
    assert toy_train("dto", 4, val_auc, on_epoch_state=lambda s: save_state(path, s, "h"), stop_after=2) is None
    state = load_state(path, "h")
    scripted_worst(worst[2:])
    resumed = toy_train("dto", 4, val_auc, resume=state)
    assert resumed.best_epoch == reference.best_epoch
    assert np.array_equal(resumed.test_scores, reference.test_scores)


def test_a_candidate_epoch_with_non_finite_weights_is_a_damaged_state(tmp_path):
    from fairbench.runs.state import DamagedState, load_state, save_state
    from fairbench.training.resume import TrainState

    state = TrainState(epochs_done=1, model={"w": torch.ones(2)}, optimizer={}, scheduler={},
                       generator=torch.Generator().get_state(),
                       candidates={"0": {"weights": {"w": torch.tensor([1.0, float("nan")])},
                                         "val_scores": torch.zeros(3, dtype=torch.float64)}})
    save_state(tmp_path / "s.pt", state, "h")
    with pytest.raises(DamagedState, match="epoch 0 candidate w: 1 of 2 values"):
        load_state(tmp_path / "s.pt", "h")

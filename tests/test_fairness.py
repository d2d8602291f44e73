"""course.fairness (chapter 3): per-group rates against scikit-learn's confusion matrix, the summary gaps and calibration
against hand computations, thresholds per group, and clear errors for bad input."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from course.fairness import (calibration_by_group, calibration_error, demographic_parity_difference, equalized_odds_difference,
                             fairness_summary, group_rates, predict_at, threshold_for_tpr)


@pytest.fixture
def random_case():
    rng = np.random.default_rng(0)
    n = 3000
    groups = rng.integers(0, 3, n)
    y = (rng.random(n) < 0.2 + 0.15 * groups).astype(int)
    probs = np.clip(0.5 * y + 0.5 * rng.random(n) - 0.1 * groups, 0, 1)
    return y, probs, groups


def test_group_rates_match_sklearn_confusion_matrix(random_case):
    y, probs, groups = random_case
    pred = predict_at(probs, groups, 0.4)
    r = group_rates(y, pred, groups)
    assert list(r.index) == [0, 1, 2]
    for g in (0, 1, 2):
        m = groups == g
        tn, fp, fn, tp = confusion_matrix(y[m], pred[m], labels=[0, 1]).ravel()
        assert r.n[g] == m.sum()
        assert np.isclose(r.base_rate[g], (tp + fn) / m.sum())
        assert np.isclose(r.selection_rate[g], (tp + fp) / m.sum())
        assert np.isclose(r.tpr[g], tp / (tp + fn)) and np.isclose(r.fnr[g], fn / (tp + fn))
        assert np.isclose(r.fpr[g], fp / (fp + tn))


def test_hand_computed_example():
    # group a: y 1 1 0 0, pred 1 0 1 0 -> TPR 1/2, FPR 1/2, selection 1/2
    # group b: y 1 0 0,   pred 1 1 1   -> TPR 1,   FPR 1,   selection 1
    y = [1, 1, 0, 0, 1, 0, 0]
    pred = [1, 0, 1, 0, 1, 1, 1]
    g = ["a"] * 4 + ["b"] * 3
    r = group_rates(y, pred, g)
    assert r.loc["a", ["tpr", "fpr", "fnr", "selection_rate"]].tolist() == [0.5, 0.5, 0.5, 0.5]
    assert r.loc["b", ["tpr", "fpr", "fnr", "selection_rate"]].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert demographic_parity_difference(pred, g) == 0.5
    assert equalized_odds_difference(y, pred, g) == 0.5


def test_equalized_odds_takes_the_larger_gap():
    # TPR: 1 vs 1 (gap 0); FPR: 0 vs 2/3 (gap 2/3)
    y = [1, 0, 0, 0, 1, 0, 0, 0]
    pred = [1, 0, 0, 0, 1, 1, 1, 0]
    g = [0] * 4 + [1] * 4
    assert np.isclose(equalized_odds_difference(y, pred, g), 2 / 3)


def test_rates_without_positives_are_nan_not_an_error():
    r = group_rates([0, 0, 1], [1, 0, 1], [0, 0, 1])
    assert np.isnan(r.tpr[0]) and np.isnan(r.fnr[0]) and r.fpr[0] == 0.5 and np.isnan(r.fpr[1])


def test_inputs_may_be_series_or_tensors():
    torch = pytest.importorskip("torch")
    y, p, g = [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]
    a = group_rates(pd.Series(y), torch.tensor(p), np.array(g))
    b = group_rates(y, p, g)
    pd.testing.assert_frame_equal(a, b)


def test_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same length"):
        group_rates([1, 0], [1, 0, 1], [0, 0, 0])


def test_calibration_by_hand():
    y = [0, 1, 0, 1, 1, 1]
    probs = [0.05, 0.15, 0.3, 0.55, 0.95, 1.0]
    g = [0, 0, 0, 0, 1, 1]
    t = calibration_by_group(y, probs, g, bins=2)
    assert t.loc[(0, 0)].tolist() == pytest.approx([3, (0.05 + 0.15 + 0.3) / 3, 1 / 3])
    assert t.loc[(0, 1)].tolist() == pytest.approx([1, 0.55, 1.0])
    assert t.loc[(1, 1)].tolist() == pytest.approx([2, 0.975, 1.0])   # 1.0 falls in the last bin
    ece = calibration_error(y, probs, g, bins=2)
    assert ece[0] == pytest.approx((3 * abs(1 / 3 - 0.5 / 3) + 1 * 0.45) / 4)
    assert ece[1] == pytest.approx(0.025)


def test_a_perfectly_calibrated_score_has_small_error():
    rng = np.random.default_rng(1)
    probs = rng.random(200_000)
    y = (rng.random(probs.size) < probs).astype(int)
    g = rng.integers(0, 2, probs.size)
    assert calibration_error(y, probs, g, bins=10).max() < 0.01


def test_predict_at_per_group_thresholds():
    assert predict_at([0.2, 0.6, 0.4, 0.35], [0, 0, 1, 1], {0: 0.5, 1: 0.4}).tolist() == [0, 1, 1, 0]
    assert predict_at([0.5, 0.49], [0, 0]).tolist() == [1, 0]   # the threshold itself counts as positive
    with pytest.raises(ValueError, match=r"group\(s\) \[1\]"):
        predict_at([0.2, 0.6], [0, 1], {0: 0.5})


def test_threshold_for_tpr_reaches_the_target(random_case):
    y, probs, _ = random_case
    for target in (0.5, 0.8, 0.95, 1.0):
        t = threshold_for_tpr(y, probs, target)
        tpr = (probs[y == 1] >= t).mean()
        assert tpr >= target
        assert (probs[y == 1] > t).mean() < target   # the highest such threshold: any higher misses the target
    with pytest.raises(ValueError, match="no positive"):
        threshold_for_tpr([0, 0], [0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="target"):
        threshold_for_tpr([1, 0], [0.1, 0.2], 0)


def test_fairness_summary_by_hand():
    y = [1, 0, 1, 0, 1, 0]
    probs = [0.9, 0.6, 0.4, 0.1, 0.8, 0.2]
    g = [0, 0, 0, 1, 1, 1]
    s = fairness_summary(y, probs, g, threshold=0.5, bins=2)
    # predictions 1 1 0 | 0 1 0: accuracy 4/6; selection 2/3 vs 1/3; TPR 1/2 vs 1; FPR 1 vs 0
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["dp_diff"] == pytest.approx(1 / 3)
    assert s["eo_diff"] == pytest.approx(1.0)
    assert s["fnr_gap"] == pytest.approx(0.5)
    assert s["worst_ece"] == pytest.approx(calibration_error(y, probs, g, bins=2).max())

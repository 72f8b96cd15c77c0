"""The metric suite every fairbench table stands on: AUC, accuracy and fairness per protected attribute.

Each metric is a registered `Metric` (catalog.py: its computation, display and use, declared once); a plugin adds
one with `register_metric`. The built-in suite:

Definitions (Fair-MoE paper §4.1; FairCLIP's released evaluation code, `FairCLIP/src/modules.py`,
`evalute_comprehensive_perf` and helpers), for one attribute with groups g:

- AUC: ROC AUC of the scores (ties count 1/2; equals sklearn `roc_auc_score`). Accuracy: label
  ŷ = score ≥ threshold (0.5 in FairCLIP).
- ES-AUC = AUC / (1 + Σ_g |AUC − AUC_g|), a plain sum over groups (α = 1); ES-Acc likewise.
- DPD = max_g − min_g selection rate P(ŷ = 1 | g) (fairlearn `demographic_parity_difference`;
  FairCLIP calls exactly that. The paper's §4.1 formula conditions on y = 1, which would be an
  equal-opportunity gap; we follow the code, which produced the published numbers).
- EOD = max(TPR gap, FPR gap), each gap max_g − min_g (fairlearn `equalized_odds_difference`).
- Group disparity: population std (ddof 0) and max − min of the group AUCs, each divided by the
  attribute's AUC (FairCLIP `compute_between_group_disparity`).
- Worst-group AUC = min_g AUC_g; AUC gap = max_g − min_g AUC_g (fairmedfm's `worst_group_auc`, `auc_gap`).
- ECE of P(label 1): Σ_b (n_b / n) |mean p − share of positives| over `kernel.ECE_BINS` (10) equal-width bins on
  [0, 1], right-closed (lo, hi] with 0 in the first (the edges pandas.cut makes); NaN when a score is outside
  [0, 1]. fairmedfm bins each group over its own [min p, max p] instead. ECE gap = max_g − min_g ECE_g.
- Brier = mean (p − y)² (sklearn `brier_score_loss`).
- Underdiagnosis (Seyyed-Kalantari et al., Nat. Med. 2021, mapped to a disease-positive label): FNR_g = 1 − TPR_g;
  FNR gap = max_g − min_g FNR_g; TPR gap = max_g − min_g TPR_g (fairlearn `equal_opportunity_difference`), the FNR
  gap up to float rounding.

Edge cases, decided here:

- Unknown attribute values (code −1, NaN, or strings like "", "unknown") are excluded from that
  attribute's metrics only, with a MetricWarning saying how many rows. The attribute's "auc" and
  "accuracy" are then computed on its known rows (hence the per-attribute copies); the top-level
  ones always use every row. A dataset's evaluation splits may already drop such rows.
- A group with one class (including a group of size 1): its AUC is undefined → NaN with a
  MetricWarning, and the group is skipped in that attribute's ES-AUC sum and AUC std/range
  (FairCLIP's code would return NaN for the whole ES-AUC instead). Likewise its TPR (no positives)
  or FPR (no negatives) is NaN and skipped in that gap of EOD; fairlearn would count it as 0.
  If no group AUC is defined, ES-AUC and the disparities are NaN.
- A group of size 0 never appears in `evaluate` (groups are the values present); in a bootstrap
  resample a group can be absent, and then its metrics are NaN for that replicate only.
- All scores equal: AUC = 0.5 (every pair is a tie), as sklearn.
- Single-class labels overall: overall AUC is NaN (with a warning), and so are all ES-AUC values
  and AUC disparities; accuracy, DPD and the defined part of EOD are still computed.
- Errors (MetricInputError, a ValueError, one line naming the array and row): NaN or infinite
  scores, labels other than 0/1, length mismatches (both lengths named), empty input, non-integer
  numeric group codes, codes below −1.

Group names: `group_names` maps attribute → {code: name}, usually the dataset's `Dataset.attributes`;
nothing is assumed without it. Codes without a name are named by their code ("3"). Strings equal to a
known name (case-insensitive) map to that name's code, so integer-coded and name-coded files give the
same result.
"""

from fairbench.metrics.bootstrap import (
    BootstrapResult,
    Difference,
    PairedBootstrapResult,
    bootstrap,
    paired_bootstrap,
    resample_indices,
)
from fairbench.metrics.catalog import (
    LEVELS,
    Metric,
    compare_metrics,
    get_metric,
    metric_names,
    metrics_at,
    register_metric,
    table_metrics,
)
from fairbench.metrics.inputs import UNKNOWN_CODE, MetricInputError
from fairbench.metrics.suite import (
    AttributeMetrics,
    GroupMetrics,
    MetricSuite,
    MetricWarning,
    evaluate,
    overall_auc,
)

__all__ = [
    "LEVELS", "UNKNOWN_CODE",
    "AttributeMetrics", "BootstrapResult", "Difference", "GroupMetrics", "Metric", "MetricInputError",
    "MetricSuite", "MetricWarning", "PairedBootstrapResult", "bootstrap", "compare_metrics", "evaluate", "get_metric",
    "metric_names", "metrics_at", "overall_auc", "paired_bootstrap", "register_metric", "resample_indices",
    "table_metrics",
]

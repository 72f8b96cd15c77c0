"""The protected attributes of Harvard-FairVLMed and their group codes (−1 = unknown), in one place.

Stdlib only: the data loader, the metric suite, the reports and the CLI all read it, and the CLI must
stay importable without numpy or torch.
"""

from __future__ import annotations

ATTRIBUTE_GROUPS: dict[str, dict[int, str]] = {
    "race": {0: "Asian", 1: "Black", 2: "White"},
    "gender": {0: "Female", 1: "Male"},
    "ethnicity": {0: "Non-Hispanic", 1: "Hispanic"},
    "language": {0: "English", 1: "Spanish", 2: "Other"},
}
ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_GROUPS)  # the papers' order
UNKNOWN = -1

"""What FairVLMed is, as plain constants: its registry name, results tags and protected attributes.

The dataset class (`fairbench.datasets.fairvlmed.FairVLMed`) and the modules that read the format (`format`,
`load`) all take these from here, so no module of the package imports the package back.
"""

from __future__ import annotations

NAME = "fairvlmed"
TAG = "fairvlmed"
SYNTHETIC_TAG = "synthetic"
# Group codes as stored in the npz files (FairCLIP's data loader), in the papers' order; −1 = unknown.
ATTRIBUTES: dict[str, dict[int, str]] = {
    "race": {0: "Asian", 1: "Black", 2: "White"},
    "gender": {0: "Female", 1: "Male"},
    "ethnicity": {0: "Non-Hispanic", 1: "Hispanic"},
    "language": {0: "English", 1: "Spanish", 2: "Other"},
}

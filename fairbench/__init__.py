"""fairbench: train and evaluate CLIP-style models on Harvard-FairVLMed for accuracy and fairness.

Kept import-light on purpose: `fairbench --help` must not pay for torch.
"""

__version__ = "0.1.0"

ATTRIBUTES: tuple[str, ...] = ("race", "gender", "ethnicity", "language")

"""The datasets that ship with fairbench; importing this module registers them."""

from fairbench.datasets import fairvlmed  # noqa: F401 - registers on import

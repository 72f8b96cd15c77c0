"""fairbench: train and evaluate CLIP-style models on Harvard-FairVLMed for accuracy and fairness.

Kept import-light on purpose: `fairbench --help` must not pay for torch.
"""

# The one place the version lives: setuptools reads it (pyproject `dynamic`), `fairbench --version` prints it.
__version__ = "0.2.0.dev0"

from fairbench.attributes import ATTRIBUTES  # noqa: E402,F401 - re-exported


def __getattr__(name: str):
    # Lazy re-exports so `import fairbench` stays cheap but plugins can write
    # `from fairbench import Method, register_method`.
    if name in ("register_method", "get_method", "list_methods", "register_dataset", "get_dataset", "list_datasets"):
        from fairbench import registry

        return getattr(registry, name)
    if name in ("Method", "Batch", "encode_batch"):
        from fairbench import method

        return getattr(method, name)
    if name in ("Dataset", "DatasetError", "DataIdentity", "LoadedDataset", "SplitTensors"):
        from fairbench.datasets import base

        return getattr(base, name)
    raise AttributeError(f"module 'fairbench' has no attribute {name!r}")

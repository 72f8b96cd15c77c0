"""fairbench: train and evaluate CLIP-style models for accuracy and fairness across protected groups.

Built in: Harvard-FairVLMed. Kept import-light on purpose: `fairbench --help` must not pay for torch.
"""

# The one place the version lives: setuptools reads it (pyproject `dynamic`), `fairbench --version` prints it.
__version__ = "0.3.0.dev0"


def __getattr__(name: str):
    # Lazy re-exports so `import fairbench` stays cheap but plugins can write
    # `from fairbench import Method, register_method` or `from fairbench import Dataset, register_dataset`.
    if name in ("register_method", "get_method", "list_methods", "register_dataset", "get_dataset", "list_datasets"):
        from fairbench import registry

        return getattr(registry, name)
    if name in ("Method", "Batch", "encode_batch"):
        from fairbench import method

        return getattr(method, name)
    if name in ("Dataset", "DatasetError", "DataIdentity", "LoadedDataset", "SplitTensors", "tensors_from_arrays"):
        import fairbench.datasets

        return getattr(fairbench.datasets, name)
    raise AttributeError(f"module 'fairbench' has no attribute {name!r}")

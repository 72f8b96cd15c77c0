"""A run's training state between epochs, so a killed run continues where it stopped with the same numbers.

After every epoch the trainer hands over a `TrainState`: model, optimiser and scheduler state, every random
number generator (Python, NumPy, torch CPU and CUDA, the shuffling generator, the group sampler's orders and
positions), the history and the best-so-far bookkeeping (epoch, key, scores, weights). `save_state` writes it
atomically to `train_state.pt` in the run folder; `load_state` reads it back. Restoring it before the next
epoch makes the rest of the run the same computation as an uninterrupted one, so its result.json metrics and
prediction files come out byte-identical.

The file holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`, plus a
content digest of all of them (`fairbench.digests.value_digest`), checked on load: a file with a damaged block
(which torch's reader does not notice) or weights that are not finite is refused (`StateError`), never resumed from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairbench.digests import value_digest
from fairbench.files import atomic_path, naming, to_jsonable
from fairbench.runs.results import STATE_FILE
from fairbench.training.resume import TrainState, rng_state, set_rng_state

__all__ = ["STATE_FILE", "StateError", "TrainState", "load_state", "rng_state", "save_state", "set_rng_state"]
# /2 adds the content digest; a /1 file (fairbench 0.2) cannot be checked, so it is not resumed from.
STATE_FORMAT = "fairbench.train_state/2"
_HEADER = ("format", "config_hash", "digest")


class StateError(ValueError):
    """A training-state file that cannot be used to resume (unreadable, another format or another config)."""


class DamagedState(StateError):
    """A training-state file whose content is damaged: it fails its digest, or its weights are not finite. It is set
    aside, never resumed from."""


def save_state(path: Path, state: TrainState, config_hash: str) -> None:
    """Write `state` with its content digest atomically (a reader or a kill sees the previous complete file or this
    one), fsynced. A failed write (full disk) raises OSError naming `path`."""
    body = _to_plain(state)
    blob = {"format": STATE_FORMAT, "config_hash": config_hash, "digest": value_digest(body), **body}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            sink = _Sink(fh)
            try:
                torch.save(blob, sink)
            except RuntimeError:  # torch reports a failed write as "PytorchStreamWriter failed writing file ..."
                if sink.error is not None:
                    raise naming(sink.error, path) from None
                raise
            fh.flush()
            os.fsync(fh.fileno())


class _Sink:
    """The file torch writes through, keeping the OSError a failed write raised (torch replaces it with a
    RuntimeError that names no file)."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def load_state(path: Path, config_hash: str) -> TrainState:
    """Read a state written by `save_state` for the run with `config_hash`; StateError says why it is unusable,
    DamagedState when its content fails the digest or holds non-finite weights."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same thing here: the file cannot be resumed from
        raise DamagedState(f"{path}: not a readable training state ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else None
        raise StateError(f"{path}: not a {STATE_FORMAT} file" + (f" (it is {found}, which carries no content "
                                                                   "digest)" if found else ""))
    if blob.get("config_hash") != config_hash:
        raise StateError(f"{path}: written for config {blob.get('config_hash')}, not {config_hash}")
    fields = {k: v for k, v in blob.items() if k not in _HEADER}
    if value_digest(fields) != blob.get("digest"):
        raise DamagedState(f"{path}: content does not match its digest (damaged on disk)")
    bad = _non_finite(fields)
    if bad:
        raise DamagedState(f"{path}: weights are not finite ({bad})")
    fields["val_scores"] = fields["val_scores"].numpy()
    fields["test_scores"] = fields["test_scores"].numpy()
    try:
        return TrainState(**fields)
    except TypeError as exc:
        raise StateError(f"{path}: incomplete training state ({exc})") from None


def _non_finite(fields: dict[str, Any]) -> str:
    """The first model / selected-epoch / candidate-epoch weight holding NaN or inf, as "name: n of m values", or
    ""."""
    groups = [("model", fields.get("model")), ("best_weights", fields.get("best_weights"))]
    groups += [(f"epoch {e} candidate", c.get("weights")) for e, c in (fields.get("candidates") or {}).items()]
    for group, weights in groups:
        for name, tensor in (weights or {}).items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                finite = torch.isfinite(tensor)
                if not bool(finite.all()):
                    return f"{group} {name}: {int((~finite).sum())} of {tensor.numel()} values"
    return ""


def _to_plain(state: TrainState) -> dict[str, Any]:
    out = dict(state.__dict__)
    out["history"] = to_jsonable(state.history)  # as history.json has it: plain floats (a method's numpy scalars
    # would not load with weights_only), NaN as None
    out["val_scores"] = torch.from_numpy(np.ascontiguousarray(state.val_scores))
    out["test_scores"] = torch.from_numpy(np.ascontiguousarray(state.test_scores))
    return out

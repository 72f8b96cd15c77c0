"""Test plugin for the SLURM tests: holds chosen array tasks after training, before their results are written.

Loaded with `--plugin` into every task of a test's job array. A task whose array index has a file
`$FAIRBENCH_TEST_HOLD/<index>` writes `<index>.held` and waits until that file is removed, so a test can
cancel or interrupt it mid-run deterministically. Without the variable (or outside SLURM) it does nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import fairbench.runs.execute as execute_module

HOLD_LIMIT_S = 240  # never hold longer than this, whatever the test does

_folder = os.environ.get("FAIRBENCH_TEST_HOLD")
_task = os.environ.get("SLURM_ARRAY_TASK_ID")
if _folder and _task is not None and not getattr(execute_module, "_test_hold_installed", False):
    write_predictions = execute_module._write_predictions

    def _hold_then_write(*args, **kwargs):
        flag = Path(_folder) / _task
        if flag.exists():
            (Path(_folder) / f"{_task}.held").write_text(str(os.getpid()))
            deadline = time.monotonic() + HOLD_LIMIT_S
            while flag.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        return write_predictions(*args, **kwargs)

    execute_module._write_predictions = _hold_then_write
    execute_module._test_hold_installed = True

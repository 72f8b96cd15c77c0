"""Announce long phases (generating data, building caches) so a run is never silent.

Library code wraps a slow phase in `phase("...")`; it logs one line when the phase starts and one when it
ends, with its duration, on the `fairbench` logger. The CLI routes that logger to the console, so a log file
or a terminal shows what is happening; a library user who configures no logging sees nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("fairbench")


@contextmanager
def phase(what: str) -> Iterator[None]:
    """Log "what …" now and "what: done in N s" when the block finishes (nothing if it fails)."""
    log.info("%s …", what)
    start = time.perf_counter()
    yield
    log.info("%s: done in %.0f s", what, time.perf_counter() - start)

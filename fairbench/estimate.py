"""How long the jobs still to run will take, from the timings of finished runs in the same results folder.

A pending job is estimated at the mean `timings.total_s` of the finished runs with its method and arch (any
attribute, seed or setting); jobs whose method and arch never finished there are counted, not guessed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Estimate:
    seconds: float = 0.0
    covered: int = 0  # pending jobs with a timing to go by
    n_timings: int = 0  # finished runs whose timings were used
    devices: set[str] = field(default_factory=set)  # "cuda" / "cpu": where those runs ran
    untimed: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, arch) → pending jobs, no timing

    def lines(self, pending: int) -> list[str]:
        """What `run --dry-run` prints: the estimate, and which jobs it could not cover."""
        if pending == 0:
            return ["nothing left to run"]
        out = []
        if self.covered:
            hours = self.seconds >= 360
            amount = f"{self.seconds / 3600:.1f}" if hours else f"{self.seconds / 60:.1f}"
            if self.devices == {"cuda"}:
                unit = "GPU-hours" if hours else "GPU-minutes"
            else:
                kinds = "/".join(sorted(self.devices)).replace("cuda", "GPU").replace("cpu", "CPU")
                unit = f"{'hours' if hours else 'minutes'} of {kinds} time"
            out.append(f"estimate: {amount} {unit} for {self.covered} of {pending} pending job(s) "
                       f"(mean timings.total_s of {self.n_timings} finished run(s) with the same method and arch)")
        if self.untimed:
            shown = ", ".join(f"{m} {a} ({n})" for (m, a), n in list(self.untimed.items())[:6])
            more = f" and {len(self.untimed) - 6} more" if len(self.untimed) > 6 else ""
            out.append(f"no finished run to time yet for: {shown}{more}")
        return out


def estimate_remaining(pending: list, records: list[dict[str, Any]]) -> Estimate:
    """`pending`: planned jobs not yet done; `records`: result.json records of the results folder."""
    timings: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for rec in records:
        total = (rec.get("timings") or {}).get("total_s")
        if isinstance(total, (int, float)) and total > 0:
            device = "cuda" if str(rec.get("device", "")).startswith("cuda") else "cpu"
            timings[(rec.get("method"), rec.get("arch"))].append((float(total), device))
    est = Estimate()
    used: set[tuple[str, str]] = set()
    for planned in pending:
        key = (planned.job.method, planned.job.arch)
        found = timings.get(key)
        if not found:
            est.untimed[key] = est.untimed.get(key, 0) + 1
            continue
        est.seconds += sum(t for t, _ in found) / len(found)
        est.covered += 1
        if key not in used:
            used.add(key)
            est.n_timings += len(found)
            est.devices.update(d for _, d in found)
    return est

"""Claims: which process is training a run folder, so that any number of launchers never train one run twice.

A claim is `claim.json` in the run folder: host, pid, start time, a heartbeat and the last completed epoch.
It is created atomically — written beside, then hard-linked into place, which fails if a claim exists — so a
reader sees a whole claim or none. Its owner refreshes the heartbeat from a background thread. Another process
skips a live claim ("running elsewhere") and takes over a dead one: a heartbeat older than the timeout, an
owner on this host whose process is gone, or an earlier start of this same (requeued) SLURM job. A take-over
renames the dead claim away first (only one contender's rename can succeed) and checks that what it moved is
the claim it judged dead before it creates its own.

Every acquisition and release is appended to `claims.log` in the run folder, a human-readable audit trail.

`build_once` claims a shared cache build (the synthetic data, a pretrained checkpoint, an image cache) the same
way, so commands started side by side on an empty cache build it once: the others wait for it instead of
building it again, and take the build over if its builder dies.

Environment: FAIRBENCH_CLAIM_TIMEOUT (seconds without a heartbeat before a claim is dead; default 300) and
FAIRBENCH_HEARTBEAT (seconds between heartbeats; default a quarter of the timeout, at most 30).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fairbench.files import naming, new_temp_file

CLAIM_FILE = "claim.json"
CLAIM_LOG = "claims.log"
TIMEOUT_ENV = "FAIRBENCH_CLAIM_TIMEOUT"
HEARTBEAT_ENV = "FAIRBENCH_HEARTBEAT"
DEFAULT_TIMEOUT_S = 300.0
BUILD_POLL_S = 0.5  # how often a process waiting for another's cache build looks again
# An empty claim file younger than this may be one being written by the no-hard-link fallback of `_create`; any
# other unreadable claim file is garbage, and dead at once.
_EMPTY_GRACE_S = 5.0

_HELD: set[str] = set()  # tokens of the claims this process holds


def claim_timeout() -> float:
    """Seconds without a heartbeat after which a claim is dead ($FAIRBENCH_CLAIM_TIMEOUT, default 300)."""
    return _env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


def heartbeat_interval(timeout: float | None = None) -> float:
    timeout = claim_timeout() if timeout is None else timeout
    return _env_seconds(HEARTBEAT_ENV, max(min(30.0, timeout / 4), 0.05))


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not a number of seconds; e.g. {name}={int(default)}") from None
    if value <= 0:
        raise ValueError(f"${name}={raw!r} must be positive; e.g. {name}={int(default)}")
    return value


@dataclass
class ClaimInfo:
    """What a claim file says about its owner."""

    host: str
    pid: int
    started: float  # unix time the claim was made
    heartbeat: float  # unix time of the last heartbeat
    token: str = ""
    pid_ns: str = ""  # the owner's pid namespace: pids compare only within one
    pid_start: str = ""  # the owner's process start time (Linux), so a reused pid is not mistaken for it
    epoch: int = 0  # epochs completed so far
    job: str = ""  # the owner's batch job, "slurm:<job id>:<restart count>": a requeued job's old claim is dead
    readable: bool = True
    empty: bool = False  # an unreadable claim file with no content at all

    def owner(self) -> str:
        return f"{self.host} pid {self.pid}"

    def age(self, now: float | None = None) -> float:
        return max((time.time() if now is None else now) - self.heartbeat, 0.0)


class ClaimedElsewhere(RuntimeError):
    """The run is being trained by another live process."""

    def __init__(self, info: ClaimInfo) -> None:
        super().__init__(f"running elsewhere ({info.owner()}, {info.epoch} epoch(s) done, heartbeat "
                         f"{info.age():.0f} s ago)")
        self.info = info


def read_claim(run_dir: Path) -> ClaimInfo | None:
    """The claim on `run_dir`, or None. An unreadable claim file counts as written when it was last modified."""
    return read_claim_file(Path(run_dir) / CLAIM_FILE)


def read_claim_file(path: Path) -> ClaimInfo | None:
    try:
        raw = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        raw, mtime = "", time.time()
    try:
        data = json.loads(raw)
        return ClaimInfo(host=str(data["host"]), pid=int(data["pid"]), started=float(data["started"]),
                         heartbeat=float(data["heartbeat"]), token=str(data.get("token", "")),
                         pid_ns=str(data.get("pid_ns", "")), pid_start=str(data.get("pid_start", "")),
                         epoch=int(data.get("epoch", 0)), job=str(data.get("job", "")))
    except (ValueError, KeyError, TypeError):
        return ClaimInfo(host="?", pid=0, started=mtime, heartbeat=mtime, readable=False, empty=not raw.strip())


def is_dead(info: ClaimInfo, timeout: float | None = None, now: float | None = None) -> str:
    """Why the claim's owner is dead, or "" while it is alive."""
    timeout = claim_timeout() if timeout is None else timeout
    if not info.readable:  # garbage from a crash or a broken disk: no owner can be alive behind it
        age = info.age(now)
        if not info.empty:
            return "its claim file is unreadable (not a claim)"
        if age > _EMPTY_GRACE_S:
            return f"its claim file is empty (written {age:.0f} s ago)"
    mine = batch_job()
    if info.job and mine and info.job.rpartition(":")[0] == mine.rpartition(":")[0] and info.job != mine:
        return f"its batch job {info.job.split(':')[1]} was requeued"
    if info.readable and info.host == _HOST and info.pid_ns == _PID_NS:
        if info.pid == os.getpid() and info.pid_start == _process_start(info.pid) and info.token not in _HELD:
            return "left behind by this process"
        if not _process_alive(info.pid, info.pid_start):
            return f"process {info.pid} on this host is gone"
    age = info.age(now)
    if age > timeout:
        return f"no heartbeat for {age:.0f} s (timeout {timeout:.0f} s, ${TIMEOUT_ENV})"
    return ""


class Claim:
    """A claim this process holds on one run folder; refresh it with `beat`, give it up with `release`."""

    def __init__(self, run_dir: Path, info: ClaimInfo) -> None:
        self.run_dir = Path(run_dir)
        self.info = info
        self.lost_to: ClaimInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.run_dir / CLAIM_FILE

    def beat(self, epoch: int | None = None) -> bool:
        """Refresh the heartbeat (and the epoch count); False once another process has taken the claim over."""
        with self._lock:
            if self.lost_to is not None:
                return False
            current = read_claim(self.run_dir)
            if current is None or current.token != self.info.token:
                self.lost_to = current or ClaimInfo(host="?", pid=0, started=0.0, heartbeat=0.0, readable=False)
                return False
            if epoch is not None:
                self.info.epoch = epoch
            self.info.heartbeat = time.time()
            tmp = _write_temp(self.path, self.info)
            os.replace(tmp, self.path)
            return True

    def start_heartbeat(self, interval: float | None = None) -> None:
        """Beat from a daemon thread every `interval` seconds until `release` (no work in the training loop)."""
        interval = heartbeat_interval() if interval is None else interval

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    if not self.beat():
                        return
                except OSError:  # a full or briefly unreachable disk: try again next beat
                    pass

        self._thread = threading.Thread(target=loop, name=f"fairbench-heartbeat-{self.run_dir.name}", daemon=True)
        self._thread.start()

    def log(self, event: str) -> None:
        append_log(self.run_dir, f"{self.info.owner()} {event}")

    def release(self, event: str = "released") -> None:
        """Stop the heartbeat and remove the claim file if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._lock:
            _HELD.discard(self.info.token)
            current = read_claim(self.run_dir)
            if current is not None and current.token == self.info.token:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                self.log(event)


def acquire(run_dir: Path, timeout: float | None = None) -> Claim:
    """Claim `run_dir` (which must exist) for this process; ClaimedElsewhere when a live process holds it.

    Contenders on one host are serialised by an flock on the run folder itself: without it, one contender could
    move a fresh take-over aside while a third created its own claim in the gap, and two would train the run."""
    run_dir = Path(run_dir)
    with _host_lock(run_dir):
        return _acquire(run_dir, timeout)


@contextlib.contextmanager
def _host_lock(run_dir: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename protocol alone
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _acquire(run_dir: Path, timeout: float | None) -> Claim:
    for _ in range(5):
        mine = _new_info()
        _HELD.add(mine.token)  # before the file exists: another thread of ours must never judge it left behind
        if _create(run_dir / CLAIM_FILE, mine):
            return _held(run_dir, mine, "claimed")
        _HELD.discard(mine.token)
        current = read_claim(run_dir)
        if current is None:
            continue  # released between our attempt and the read: try again
        reason = is_dead(current, timeout)
        if not reason:
            raise ClaimedElsewhere(current)
        _HELD.add(mine.token)
        if _take_over(run_dir, current, mine):
            return _held(run_dir, mine, f"took over from {current.owner()} ({reason})")
        _HELD.discard(mine.token)
    current = read_claim(run_dir)
    raise ClaimedElsewhere(current or ClaimInfo(host="?", pid=0, started=0.0, heartbeat=time.time()))


def build_once(lock_dir: Path, ready: Callable[[], bool], build: Callable[[], None], what: str,
               log: Callable[[str], None] | None = None, poll_s: float = BUILD_POLL_S) -> None:
    """Run `build` unless `ready()`, holding a claim on `lock_dir` (created if missing) while it runs.

    Another process already building it (a live claim) is waited for, with one line via `log`, until `ready()`;
    a dead builder's claim is taken over and the build run here. `build` must be all-or-nothing (build beside,
    then rename), so a build killed half-way leaves nothing `ready()` accepts."""
    announced = False
    while not ready():
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            claim = acquire(lock_dir)
        except ClaimedElsewhere as exc:
            if not announced and log is not None:
                log(f"waiting for {exc.info.owner()}, which is {what}")
                announced = True
            time.sleep(poll_s)
            continue
        event = "released (failed)"
        try:
            claim.start_heartbeat()
            if not ready():
                claim.log(what)
                build()
            event = "released (built)"
        finally:
            claim.release(event)
        return


def append_log(run_dir: Path, line: str) -> None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    fd = os.open(Path(run_dir) / CLAIM_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, f"{stamp} {line}\n".encode())
    finally:
        os.close(fd)


def _held(run_dir: Path, info: ClaimInfo, event: str) -> Claim:
    claim = Claim(run_dir, info)
    claim.log(event)
    return claim


def _take_over(run_dir: Path, dead: ClaimInfo, mine: ClaimInfo) -> bool:
    """Move the dead claim aside and put ours in its place; False if another process got there first."""
    path = run_dir / CLAIM_FILE
    moved = run_dir / f".{CLAIM_FILE}.taken-{mine.token}"
    try:
        os.rename(path, moved)
    except FileNotFoundError:
        return False
    try:
        what = read_claim_file(moved)
        if what is None or what.token != dead.token:  # a fresh claim appeared since we judged: put it back
            with contextlib.suppress(FileExistsError):
                os.link(moved, path)
            return False
        if not _create(path, mine):
            return False
        for leftover in run_dir.glob(f".{CLAIM_FILE}.{dead.token}-*.tmp"):  # a heartbeat the kill cut short
            leftover.unlink(missing_ok=True)
        return True
    finally:
        moved.unlink(missing_ok=True)


def _create(path: Path, info: ClaimInfo) -> bool:
    """Put a complete claim file at `path` unless one exists (a hard link cannot replace a file)."""
    tmp = _write_temp(path, info)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create (readers may see it empty for a moment)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(tmp.read_text())
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _write_temp(path: Path, info: ClaimInfo) -> Path:
    try:
        tmp = new_temp_file(path, tag=info.token)  # a take-over finds what a killed owner left half-written
    except OSError as exc:  # a read-only or full folder: name the claim, not a temporary name
        raise naming(exc, path) from None
    data: dict[str, Any] = {k: v for k, v in asdict(info).items() if k not in ("readable", "empty")}
    data["started_at"] = datetime.fromtimestamp(info.started, timezone.utc).isoformat(timespec="seconds")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    return tmp


def _new_info() -> ClaimInfo:
    now = time.time()
    return ClaimInfo(host=_HOST, pid=os.getpid(), started=now, heartbeat=now, token=secrets.token_hex(8),
                     pid_ns=_PID_NS, pid_start=_process_start(os.getpid()), job=batch_job())


def batch_job() -> str:
    """This process's SLURM job (array task) and restart count, or "" outside SLURM; a requeued job keeps its id
    and counts up SLURM_RESTART_COUNT, so a claim of an earlier start of the same job is dead."""
    env = os.environ
    job = env.get("SLURM_JOB_ID", "")
    if env.get("SLURM_ARRAY_JOB_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return f"slurm:{job}:{env.get('SLURM_RESTART_COUNT', '0')}" if job else ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return True
    return not start or _process_start(pid) in ("", start)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


_HOST = socket.gethostname()
_PID_NS = _pid_namespace()

"""Run claims: one live owner per run folder, dead claims taken over exactly once, heartbeats, lost claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fairbench.runs import claims
from fairbench.runs.claims import CLAIM_FILE, ClaimedElsewhere, acquire, is_dead, read_claim


def _dead_pid() -> int:
    """The pid of a process of ours that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_claim(run_dir: Path, **fields) -> None:
    now = time.time()
    info = {"host": "elsewhere", "pid": 4242, "started": now, "heartbeat": now, "token": "feedbeef", "epoch": 2,
            **fields}
    (run_dir / CLAIM_FILE).write_text(json.dumps(info))


def test_a_claim_holds_its_owner_and_keeps_others_out(tmp_path):
    claim = acquire(tmp_path)
    info = read_claim(tmp_path)
    assert info.pid == os.getpid() and info.token == claim.info.token and not is_dead(info)
    with pytest.raises(ClaimedElsewhere, match=r"running elsewhere \(.* pid \d+, 0 epoch\(s\) done"):
        acquire(tmp_path)
    assert claim.beat(epoch=3) and read_claim(tmp_path).epoch == 3
    claim.release("released (done)")
    assert read_claim(tmp_path) is None
    log = (tmp_path / "claims.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in log] == [f"{info.host} pid {os.getpid()} claimed",
                                                       f"{info.host} pid {os.getpid()} released (done)"]


def test_a_live_claim_from_another_host_is_left_alone(tmp_path):
    _fake_claim(tmp_path)
    with pytest.raises(ClaimedElsewhere) as err:
        acquire(tmp_path, timeout=60)
    assert err.value.info.host == "elsewhere" and err.value.info.epoch == 2
    assert read_claim(tmp_path).token == "feedbeef"


@pytest.mark.parametrize("how", ["heartbeat", "pid", "unreadable"])
def test_a_dead_claim_is_taken_over(tmp_path, how):
    if how == "heartbeat":  # another host, silent for longer than the timeout
        _fake_claim(tmp_path, heartbeat=time.time() - 120)
        reason = "no heartbeat for 120 s"
    elif how == "pid":  # this host (and pid namespace), but the process is gone: no need to wait for the timeout
        _fake_claim(tmp_path, host=claims._HOST, pid_ns=claims._PID_NS, pid=_dead_pid())
        reason = "on this host is gone"
    else:  # not JSON (garbage, however fresh): no owner can be behind it, so it is dead at once, not after the timeout
        (tmp_path / CLAIM_FILE).write_text("{")
        reason = "its claim file is unreadable"
    claim = acquire(tmp_path, timeout=60)
    assert read_claim(tmp_path).token == claim.info.token
    assert reason in (tmp_path / "claims.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claim.json", "claims.log"]  # nothing left aside
    claim.release()


def test_a_take_over_removes_the_heartbeat_its_dead_owner_was_writing_and_nothing_else(tmp_path):
    _fake_claim(tmp_path, host=claims._HOST, pid_ns=claims._PID_NS, pid=_dead_pid(), token="0badc0de")
    dead = read_claim(tmp_path)
    half_written = claims._write_temp(tmp_path / CLAIM_FILE, dead)  # killed between writing and renaming a beat
    others = claims._write_temp(tmp_path / CLAIM_FILE, read_claim(tmp_path).__class__(
        host="elsewhere", pid=1, started=0.0, heartbeat=0.0, token="c0ffee00"))  # another claimant's, in flight
    claim = acquire(tmp_path, timeout=60)
    assert not half_written.exists() and others.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["claim.json", "claims.log", others.name])
    claim.release()


def test_a_requeued_slurm_job_takes_over_the_claim_of_its_earlier_start(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "812")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _fake_claim(tmp_path, job="slurm:812_2:0")  # another array task: alive
    with pytest.raises(ClaimedElsewhere):
        acquire(tmp_path, timeout=60)
    _fake_claim(tmp_path, job="slurm:812_3:0")  # this task before its requeue, on another node
    claim = acquire(tmp_path, timeout=60)
    assert "its batch job 812_3 was requeued" in (tmp_path / "claims.log").read_text()
    assert read_claim(tmp_path).job == "slurm:812_3:1"
    claim.release()


def test_a_dead_claim_is_taken_over_by_exactly_one_of_many(tmp_path):
    _fake_claim(tmp_path, heartbeat=time.time() - 120)
    start = threading.Barrier(8)
    won, lost = [], []

    def contend() -> None:
        start.wait()
        try:
            won.append(acquire(tmp_path, timeout=60))
        except ClaimedElsewhere:
            lost.append(1)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert read_claim(tmp_path).token == won[0].info.token
    won[0].release()


def test_the_heartbeat_thread_refreshes_the_claim_and_notices_a_take_over(tmp_path):
    claim = acquire(tmp_path)
    first = read_claim(tmp_path).heartbeat
    claim.start_heartbeat(interval=0.05)
    deadline = time.time() + 10
    while read_claim(tmp_path).heartbeat == first and time.time() < deadline:
        time.sleep(0.02)
    assert read_claim(tmp_path).heartbeat > first
    _fake_claim(tmp_path)  # another process decided ours was dead and took over
    assert not claim.beat() and claim.lost_to.host == "elsewhere"
    claim.release()
    assert read_claim(tmp_path).host == "elsewhere"  # a lost claim is never removed by its former owner


def test_timeout_and_heartbeat_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(claims.TIMEOUT_ENV, "40")
    assert claims.claim_timeout() == 40 and claims.heartbeat_interval() == 10
    monkeypatch.setenv(claims.HEARTBEAT_ENV, "2.5")
    assert claims.heartbeat_interval() == 2.5
    monkeypatch.setenv(claims.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=r"\$FAIRBENCH_CLAIM_TIMEOUT='soon' is not a number of seconds"):
        claims.claim_timeout()

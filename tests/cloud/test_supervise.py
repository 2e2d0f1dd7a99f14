"""``serve`` owns its children: signals, parent death, restarts, one service per data dir.

REAL processes and signals throughout: the service as an OS process (uvicorn,
a spawned worker, the simulated enclave), checked by reading the process
table (``/proc``), never by hoping. The helpers' own behaviour (lock, sweep,
supervisor backoff) is tested on plain ``sleep`` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cloudkit import wait_for

from cipherloop.cloud.process import ServiceProcess
from cipherloop.cloud.supervise import (
    EXIT_DATA_DIR_IN_USE,
    Child,
    DataDirInUse,
    DataDirLock,
    Supervisor,
    pid_alive,
    read_lock_info,
    sweep_stale,
)

ADMIN = "supervise-admin-token-0123456789"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cl-sup-"))
    yield path / "data"
    subprocess.run(["rm", "-rf", str(path)], check=False)


# --------------------------------------------------------------------- the helpers
def test_second_lock_on_a_data_dir_is_refused_and_names_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path).acquire()
    try:
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    DataDirLock(tmp_path).acquire().release()  # free again once released


def test_sweep_removes_only_folders_of_dead_processes(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"cipherloop-{dead.pid}-abc"
    mine = tmp_path / f"cipherloop-{os.getpid()}-abc"
    other = tmp_path / "cipherloop-enclave-xyz"
    for p in (stale, mine, other):
        p.mkdir()
    assert sweep_stale(tmp_path) == 1
    assert not stale.exists() and mine.exists() and other.exists()


def test_supervisor_restarts_a_dead_child_with_backoff_and_reports_it() -> None:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(subprocess.Popen(["sleep", "60"]))

    start()
    child = Child("sleeper", start, lambda: procs[-1].poll() is None, lambda: procs[-1].pid)
    seen: list[dict[str, int | None]] = []
    sup = Supervisor([child], backoff_s=0.6, poll_s=0.05, on_change=seen.append).start()
    try:
        assert sup.health() == {"sleeper": "up"}
        procs[-1].kill()
        assert wait_for(lambda: sup.health() == {"sleeper": "down"}, timeout=5)
        assert wait_for(lambda: len(procs) == 2 and sup.health() == {"sleeper": "up"}, timeout=10)
        procs[-1].kill()  # a second failure in a row waits twice as long
        t0 = time.monotonic()
        assert wait_for(lambda: len(procs) == 3, timeout=10)
        assert time.monotonic() - t0 >= 1.2
        assert seen[-1] == {"sleeper": procs[-1].pid}
    finally:
        sup.close()
        for p in procs:
            p.kill()
            p.wait()


# ------------------------------------------------------------------ the real service
def _children(service: ServiceProcess) -> dict[str, int]:
    """The service's enclave and worker pids, by reading the process table."""
    kids = {pid: _cmdline(pid) for pid in service.descendants()}
    out = {"enclave": [p for p, c in kids.items() if "-m cipherloop.enclave" in c],
           "worker": [p for p, c in kids.items() if "spawn_main" in c]}
    assert all(len(v) == 1 for v in out.values()), kids
    return {k: v[0] for k, v in out.items()}


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "group"), [
    (signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGKILL, False),
    (signal.SIGINT, True)], ids=["SIGTERM", "SIGINT", "SIGKILL", "Ctrl-C to the group"])
def test_a_signal_to_the_main_process_leaves_no_cipherloop_process(data_dir: Path, sig: int,
                                                                   group: bool) -> None:
    service = ServiceProcess(data_dir, admin_token=ADMIN).start()
    try:
        kids = _children(service)
        everyone = service.descendants()
        assert read_lock_info(data_dir)["children"] == kids
        sock = Path(read_lock_info(data_dir)["enclave_socket"])
        assert sock.exists()
        assert service.proc is not None
        if group:  # a terminal's Ctrl-C reaches every process of the foreground group
            os.killpg(service.proc.pid, sig)
        else:  # the main process only, as systemd, docker or kill(1) send it
            service.signal(sig)
        code = service.proc.wait(timeout=30)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0), service.log()
        assert wait_for(lambda: not [p for p in everyone if pid_alive(p)], timeout=15), (
            {p: _cmdline(p) for p in everyone if pid_alive(p)})
        if group:
            assert "restarted" not in service.log()  # no child came back during shutdown
        if sig != signal.SIGKILL:  # a clean stop removes the socket's folder too
            assert not sock.parent.exists()
            assert read_lock_info(data_dir) == {}
    finally:
        service.kill9()


@pytest.mark.slow
def test_second_service_on_a_data_dir_exits_with_its_code(data_dir: Path) -> None:
    with ServiceProcess(data_dir, admin_token=ADMIN) as first:
        second = subprocess.run(
            [sys.executable, "-m", "cipherloop.cloud.server", "--data-dir", str(data_dir),
             "--port", "0"], env={**os.environ, "CIPHERLOOP_ADMIN_TOKEN": ADMIN},
            capture_output=True, text=True, timeout=120)
        assert second.returncode == EXIT_DATA_DIR_IN_USE, second.stderr
        assert "in use by another cipherloop service" in second.stderr
        assert f"pid {first.proc.pid if first.proc else ''}" in second.stderr
        assert httpx.get(f"{first.url}/healthz").status_code == 200  # the first one is untouched


@pytest.mark.slow
def test_a_killed_child_is_restarted_and_healthz_says_degraded_meanwhile(data_dir: Path) -> None:
    service = ServiceProcess(data_dir, admin_token=ADMIN,
                             env={"CIPHERLOOP_RESTART_BACKOFF_S": "2"}).start()
    try:
        for name in ("worker", "enclave"):
            before = _children(service)
            os.kill(before[name], signal.SIGKILL)
            down = wait_for(lambda: (r := httpx.get(f"{service.url}/healthz")).status_code == 503
                         and r, timeout=10)
            assert down.json()["status"] == "degraded"
            assert down.json()["children"][name] == "down"
            up = wait_for(lambda: (r := httpx.get(f"{service.url}/healthz")).status_code == 200
                       and r, timeout=60, step=0.2)
            assert up.json()["children"] == {"enclave": "up", "worker": "up"}
            after = _children(service)
            assert after[name] != before[name]
            assert read_lock_info(data_dir)["children"][name] == after[name]
        # Children restarted by the supervisor (not the main thread) die with the service too.
        everyone = service.descendants()
        service.signal(signal.SIGKILL)
        assert wait_for(lambda: not [p for p in everyone if pid_alive(p)], timeout=15)
    finally:
        service.kill9()

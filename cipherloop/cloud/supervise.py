"""Keeps the service's children alive, and the service alone on its data directory.

Runs in: host (the ``serve`` process and its round worker). ``serve`` owns
two children, the enclave and the round worker:

* :class:`DataDirLock` -- one service per data directory: an exclusive
  ``flock`` on ``<data_dir>/serve.lock``, held for the service's life and
  released by the kernel however it ends. The file also says who holds it
  (the service's pid, the enclave's socket and the children's pids), for
  operators and tests.
* :class:`Supervisor` -- a thread that restarts a dead child with
  exponential backoff and reports each child as ``up`` or ``down`` for
  ``/healthz``. The enclave restores its sealed keys on its own at start;
  a restarted worker redoes the rounds it left running.
* :func:`die_with_parent` -- the children's side: exit when ``serve`` dies,
  even by ``kill -9`` (``PR_SET_PDEATHSIG`` on Linux, and a poll of the
  parent pid everywhere).
* :func:`sweep_stale` -- scratch folders named after a process that is gone
  (``kill -9`` skips every clean-up) are removed at the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CipherloopError

log = logging.getLogger("cipherloop.cloud.supervise")

EXIT_DATA_DIR_IN_USE = 5
"""Exit status of ``serve`` when another service holds the data directory."""

LOCK_NAME = "serve.lock"
_PR_SET_PDEATHSIG = 1


class DataDirInUse(CipherloopError):
    """Another cipherloop service runs on this data directory."""


class DataDirLock:
    """An exclusive, kernel-held lock on a data directory (``<data_dir>/serve.lock``).

    Parameters
    ----------
    data_dir : Path
        The service's data directory (created if missing).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None
        self._info: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"DataDirLock({str(self.path)!r}, held={self._fd is not None})"

    def acquire(self) -> DataDirLock:
        """Take the lock or raise :class:`DataDirInUse` naming the holder's pid.

        Raises
        ------
        DataDirInUse
            Another process holds the lock.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = read_lock_info(self.path.parent).get("pid", "unknown")
            raise DataDirInUse(
                f"{self.path.parent} is in use by another cipherloop service (pid {holder}); "
                f"stop that one, or give this one another --data-dir") from None
        self._fd = fd
        self.record(pid=os.getpid())
        return self

    def record(self, **info: Any) -> None:
        """Merge ``info`` into the lock file's JSON (who holds it, its children)."""
        if self._fd is None:
            return
        self._info.update(info)
        data = json.dumps(self._info, sort_keys=True).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def read_lock_info(data_dir: Path) -> dict[str, Any]:
    """What the running service recorded in ``<data_dir>/serve.lock`` ({} if nothing)."""
    try:
        info = json.loads((Path(data_dir) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


_PID_NAME = re.compile(r"^cipherloop-(\d+)-")


def sweep_stale(base: Path) -> int:
    """Remove ``base/cipherloop-<pid>-*`` folders of ours whose process is gone; how many.

    A killed process leaves its scratch folders (SEAL's serialisation files
    in ``/dev/shm``, the enclave's socket folder) behind; the name carries
    the pid that made it, so a folder is removed only when that pid is dead.
    """
    n = 0
    try:
        entries = list(Path(base).iterdir())
    except OSError:
        return 0
    for p in entries:
        m = _PID_NAME.match(p.name)
        if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink() and p.stat().st_uid == os.getuid():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
        except OSError:
            continue
    return n


def die_with_parent(parent_pid: int, *, poll_s: float = 0.5) -> None:
    """Make this process get SIGTERM when ``parent_pid`` dies, however it dies.

    Linux delivers ``PR_SET_PDEATHSIG`` when the parent exits; a daemon
    thread also polls the parent pid (other systems, and the window before
    the ``prctl`` took effect).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5.0)
        os._exit(1)  # SIGTERM was ignored or its handler hung

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# ------------------------------------------------------------------------ supervisor
@dataclass
class Child:
    """One supervised child process, as the supervisor sees it.

    Parameters
    ----------
    name : str
        ``enclave`` or ``worker`` (the key in ``/healthz``).
    start : callable
        Starts the process and returns once it serves (raises if it can't).
    alive : callable
        Whether it still runs.
    pid : callable
        Its pid, or ``None``.
    """

    name: str
    start: Callable[[], object]
    alive: Callable[[], bool]
    pid: Callable[[], int | None]
    up: bool = True
    failures: int = 0
    next_try: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Restarts dead children with exponential backoff; reports their state.

    Parameters
    ----------
    children : list of Child
        Already started.
    backoff_s, max_backoff_s : float
        The first restart waits ``backoff_s``; each failure in a row doubles
        the wait, up to ``max_backoff_s``. A child that stays up
        ``stable_s`` resets its count.
    on_change : callable, optional
        Called with ``{name: pid}`` after every (re)start (the lock file records it).
    """

    def __init__(self, children: list[Child], *, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, stable_s: float = 60.0, poll_s: float = 0.2,
                 on_change: Callable[[dict[str, int | None]], None] | None = None) -> None:
        self.children = children
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.poll_s = poll_s
        self.on_change = on_change
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def __repr__(self) -> str:
        return f"Supervisor({self.health()!r})"

    def start(self) -> Supervisor:
        self._notify()
        self._thread.start()
        return self

    def stop_restarting(self) -> None:
        """From now on, a child that dies stays dead (safe in a signal handler: never blocks)."""
        self._stop.set()

    def close(self) -> None:
        """Stop restarting and wait for a restart in progress (call before stopping children)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=90)

    def health(self) -> dict[str, str]:
        """``{child: "up" | "down"}``."""
        with self._lock:
            return {c.name: "up" if c.up and c.alive() else "down" for c in self.children}

    def pids(self) -> dict[str, int | None]:
        return {c.name: c.pid() for c in self.children}

    def _notify(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.pids())
            except Exception:  # a status file is a convenience; never stop supervising for it
                log.exception("could not record the children's pids")

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            for child in self.children:
                if self._stop.is_set():
                    return
                self._check(child)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.alive():
            if child.up and child.failures and now - child.started_at > self.stable_s:
                child.failures = 0
            return
        if child.up:
            with self._lock:
                child.up = False
            child.failures += 1
            child.next_try = now + min(self.max_backoff_s,
                                       self.backoff_s * 2 ** (child.failures - 1))
            log.warning("%s process died; restarting in %.1fs", child.name,
                        child.next_try - now)
            return
        if now < child.next_try:
            return
        try:
            child.start()
        except Exception as exc:
            child.failures += 1
            child.next_try = time.monotonic() + min(self.max_backoff_s,
                                                    self.backoff_s * 2 ** (child.failures - 1))
            log.warning("%s did not restart (%s); next try in %.1fs", child.name,
                        type(exc).__name__, child.next_try - time.monotonic())
            return
        with self._lock:
            child.up = True
            child.started_at = time.monotonic()
        log.info("%s restarted (pid %s)", child.name, child.pid())
        self._notify()

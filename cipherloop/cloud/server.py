"""Run the service: the enclave process, the round worker process, and uvicorn.

Runs in: host. :func:`serve` is what ``cipherloop serve`` calls; ``python -m
cipherloop.cloud.server`` runs it too (settings from ``CIPHERLOOP_*``
variables, a few flags on top). Three processes: the enclave (unless
``enclave_address`` names a running one), the worker (which exits when the
server dies, even by ``kill -9``), and the HTTP server in this process.

The enclave keeps its state in ``<data_dir>/enclave``: for the simulated
platform its root certificate (``platform/sim-root.crt.pem``, which owners
pin) and host secret, and every provisioned key sealed in ``sealed-keys/``.
Keys arrive only by attested provisioning relayed through the HTTP API.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import uvicorn

from ..errors import EnclaveUnavailable
from ..learn import EnclaveClient, EnclaveProcess
from .app import create_app
from .blobs import BlobStore
from .db import make_engine
from .refiner import LearnRefiner
from .settings import Settings
from .supervise import EXIT_DATA_DIR_IN_USE, Child, DataDirInUse, DataDirLock, Supervisor, sweep_stale
from .worker import worker_main

log = logging.getLogger("cipherloop.cloud")


class WorkerProcess:
    """The round worker as a child process (``spawn``: TenSEAL holds the GIL); restartable."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: multiprocessing.process.BaseProcess | None = None

    def __repr__(self) -> str:
        return f"WorkerProcess(pid={self.pid})"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def start(self) -> WorkerProcess:
        # The worker asks for PR_SET_PDEATHSIG, which fires when the *thread* that started it
        # ends: the main thread, or the supervisor's, which ends only at shutdown.
        ctx = multiprocessing.get_context("spawn")
        self.proc = ctx.Process(target=worker_main, args=(self.settings, os.getpid()),
                                name="cipherloop-worker", daemon=False)
        self.proc.start()
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()


# A Unix socket path must fit in sun_path (108 bytes on Linux); leave a margin.
_MAX_SOCKET_PATH = 100


def _socket_dir(state_dir: Path, stack: ExitStack) -> Path:
    """A fresh private folder for this start's enclave socket, named after this process.

    A new folder per start means the service can only ever reach the enclave
    it started: an enclave left over from an earlier run listens on an old
    path nobody connects to. Folders of dead processes are swept at start.
    """
    base = state_dir
    if len(str(state_dir / "cipherloop-0000000-xxxxxxxx" / "enclave.sock")) >= _MAX_SOCKET_PATH:
        base = Path(tempfile.gettempdir())
    sweep_stale(base)
    run = Path(tempfile.mkdtemp(prefix=f"cipherloop-{os.getpid()}-", dir=base))  # 0700
    stack.callback(shutil.rmtree, run, ignore_errors=True)
    return run


def _start_enclave(settings: Settings, stack: ExitStack) -> EnclaveProcess:
    """Start the enclave with its state (platform secrets, sealed keys) in ``<data_dir>/enclave``.

    The state directory persists, so a restarted enclave -- after ``kill -9``
    too -- gets every tenant's key back from sealed storage, without the
    owners. Local (unattested) provisioning is never enabled here: keys
    arrive only through attested provisioning (``/v1/enclave/...``).
    """
    state_dir = settings.enclave_dir.resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = _socket_dir(state_dir, stack) / "enclave.sock"
    enclave = EnclaveProcess(state_dir=state_dir, socket_path=sock,
                             log_path=settings.data_dir / "enclave.log")
    stack.enter_context(enclave)
    log.info("enclave started (%s, state in %s)", enclave.socket_path, state_dir)
    return enclave


def _announce_platform(settings: Settings, client: EnclaveClient) -> None:
    """Say loudly, in the log and on stderr, when the enclave is the simulated TEE."""
    try:
        hello = client.hello()
    except EnclaveUnavailable:  # an external enclave may come up later; rounds wait for it
        log.warning("enclave at %s is not reachable yet", client.address)
        return
    if hello.get("platform") != "sim":
        log.info("enclave platform %s, measurement %s", hello.get("platform"),
                 hello.get("measurement"))
        return
    root = settings.enclave_dir.resolve() / "platform" / "sim-root.crt.pem"
    where = (str(root) if settings.enclave_address is None
             else "the platform/sim-root.crt.pem in that enclave's --state-dir")
    message = (f"SIMULATED TEE -- NOT A TEE: the enclave protects nothing from this host. "
               f"Owners pin its simulated root certificate at {where} "
               f"(measurement {hello.get('measurement')}); development and testing only.")
    log.warning("%s", message)
    print(f"cipherloop: {message}", file=sys.stderr, flush=True)  # noqa: T201


class _Uvicorn(uvicorn.Server):
    """uvicorn that stops the supervisor's restarts the moment a signal asks it to exit.

    Ctrl-C reaches the whole process group, so the children die at once;
    while uvicorn drains its connections, nothing may restart them.
    """

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


class _Shutdown(BaseException):
    """SIGTERM or SIGINT arrived: unwind, stopping the children on the way out."""


def _stop_on_signals(stack: ExitStack, before: list[Callable[[], None]]) -> None:
    """SIGTERM and SIGINT end :func:`serve` cleanly (uvicorn re-raises them after its shutdown).

    The first signal runs ``before`` (stop restarting children) and unwinds;
    later ones are ignored, so a second Ctrl-C can't cut the clean-up short.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        for fn in before:
            fn()
        raise _Shutdown(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        stack.callback(signal.signal, sig, signal.getsignal(sig))
        signal.signal(sig, handler)


def serve(settings: Settings) -> None:
    """Run the enclave, the worker and the HTTP server until SIGTERM or SIGINT.

    The enclave and the worker are this process's children: a supervisor
    restarts either when it dies (with backoff), both stop when this process
    stops, and both exit on their own if it is killed. Only one service may
    run on a data directory.

    Parameters
    ----------
    settings : Settings
        Built once by the caller (``Settings.from_env`` plus flags).

    Raises
    ------
    DataDirInUse
        Another service holds ``settings.data_dir``.
    """
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lock = DataDirLock(settings.data_dir).acquire()
    before: list[Callable[[], None]] = []
    try:
        with ExitStack() as stack:
            stack.callback(lock.release)
            _stop_on_signals(stack, before)
            _serve_locked(settings, stack, lock, before)
    except _Shutdown as sig:
        log.info("stopped by signal %s", sig.args[0])


def _serve_locked(settings: Settings, stack: ExitStack, lock: DataDirLock,
                  before: list[Callable[[], None]]) -> None:
    shm = Path("/dev/shm")
    if shm.is_dir():
        sweep_stale(shm)  # SEAL scratch folders of killed processes
    engine = make_engine(settings.db_url)  # tables exist before the worker starts
    stack.callback(engine.dispose)
    BlobStore(settings.blob_dir).sweep_tmp()
    children: list[Child] = []
    address = settings.enclave_address
    if address is None:
        enclave = _start_enclave(settings, stack)
        address = str(enclave.socket_path)
        children.append(Child("enclave", enclave.start, enclave.alive, lambda: enclave.pid))
        lock.record(enclave_socket=address)
    # The relay's own connection (never queued behind inference); its calls take ms.
    link = EnclaveClient(address, timeout=30.0)
    stack.callback(link.close)
    _announce_platform(settings, link)
    settings = settings.with_(enclave_address=address)
    if settings.run_worker:
        worker = WorkerProcess(settings).start()
        stack.callback(worker.stop)
        children.append(Child("worker", worker.start, worker.alive, lambda: worker.pid))
    supervisor = Supervisor(children, backoff_s=settings.restart_backoff_s,
                            on_change=lambda pids: lock.record(children=pids)).start()
    stack.callback(supervisor.close)  # runs first: no restarts while the children stop
    before.append(supervisor.close)
    refiner = LearnRefiner(EnclaveClient(address))
    stack.callback(refiner.close)
    app = create_app(settings, refiner=refiner, engine=engine, enclave=link,
                     health=supervisor.health)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level.lower())
    _Uvicorn(config, on_exit=supervisor.stop_restarting).run()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cipherloop.cloud.server``: settings from the environment, flags on top."""
    p = argparse.ArgumentParser(prog="python -m cipherloop.cloud.server",
                                description="Run the cipherloop refining service.")
    p.add_argument("--data-dir", type=Path, help="database, blobs and logs (CIPHERLOOP_DATA_DIR)")
    p.add_argument("--database-url", help="SQLAlchemy URL; SQLite in --data-dir by default")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--enclave-address", help="use a running enclave instead of starting one")
    p.add_argument("--worker-id")
    p.add_argument("--poll-interval-s", type=float)
    p.add_argument("--no-worker", action="store_true", help="serve HTTP only")
    a = p.parse_args(argv)
    try:
        settings = Settings.from_env(
            data_dir=a.data_dir, database_url=a.database_url, host=a.host, port=a.port,
            enclave_address=a.enclave_address, worker_id=a.worker_id,
            poll_interval_s=a.poll_interval_s, run_worker=False if a.no_worker else None)
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        serve(settings)
    except DataDirInUse as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_DATA_DIR_IN_USE
    return 0


if __name__ == "__main__":
    sys.exit(main())

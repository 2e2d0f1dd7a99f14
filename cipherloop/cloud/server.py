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
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import uvicorn

from ..errors import EnclaveUnavailable
from ..learn import EnclaveClient, EnclaveProcess
from .app import create_app
from .blobs import BlobStore
from .db import make_engine
from .refiner import LearnRefiner
from .settings import Settings
from .worker import worker_main

log = logging.getLogger("cipherloop.cloud")


def _start_worker(settings: Settings) -> multiprocessing.process.BaseProcess:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=worker_main, args=(settings, os.getpid()), name="cipherloop-worker",
                       daemon=False)
    proc.start()
    return proc


def _stop_worker(proc: multiprocessing.process.BaseProcess) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()


# A Unix socket path must fit in sun_path (108 bytes on Linux); leave a margin.
_MAX_SOCKET_PATH = 100


def _start_enclave(settings: Settings, stack: ExitStack) -> str:
    """Start the enclave with its state (platform secrets, sealed keys) in ``<data_dir>/enclave``.

    The state directory persists, so a restarted service -- after ``kill -9``
    too -- gets every tenant's key back from sealed storage, without the
    owners. Local (unattested) provisioning is never enabled here: keys
    arrive only through attested provisioning (``/v1/enclave/...``).
    """
    state_dir = settings.enclave_dir.resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = state_dir / "enclave.sock"
    if len(str(sock)) >= _MAX_SOCKET_PATH:
        short = Path(tempfile.mkdtemp(prefix="cipherloop-enclave-"))  # 0700
        stack.callback(shutil.rmtree, short, ignore_errors=True)
        sock = short / "enclave.sock"
    enclave = EnclaveProcess(state_dir=state_dir, socket_path=sock,
                             log_path=settings.data_dir / "enclave.log")
    stack.enter_context(enclave)
    log.info("enclave started (%s, state in %s)", enclave.socket_path, state_dir)
    return str(enclave.socket_path)


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


def serve(settings: Settings) -> None:
    """Run the enclave, the worker and the HTTP server until interrupted.

    Parameters
    ----------
    settings : Settings
        Built once by the caller (``Settings.from_env`` plus flags).
    """
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)  # tables exist before the worker starts
    BlobStore(settings.blob_dir).sweep_tmp()
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        address = settings.enclave_address
        if address is None:
            address = _start_enclave(settings, stack)
        # The relay's own connection (never queued behind inference); its calls take ms.
        link = EnclaveClient(address, timeout=30.0)
        stack.callback(link.close)
        _announce_platform(settings, link)
        settings = settings.with_(enclave_address=address)
        if settings.run_worker:
            worker = _start_worker(settings)
            stack.callback(_stop_worker, worker)
        refiner = LearnRefiner(EnclaveClient(address))
        stack.callback(refiner.close)
        app = create_app(settings, refiner=refiner, engine=engine, enclave=link)
        config = uvicorn.Config(app, host=settings.host, port=settings.port,
                                log_level=settings.log_level.lower())
        uvicorn.Server(config).run()


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
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The round loop: schedules triggered rounds, runs them through the refiner, recovers.

Runs in: host, as its own OS process next to the HTTP server (TenSEAL holds
the GIL; a round would starve the server in a thread). The loop and the
policy are separate: :func:`cipherloop.cloud.policy.trigger` decides when a
round starts, the refiner decides promote or keep; this module only moves
rounds through their states:

* ``pending -> running``: claimed atomically (one worker wins), with the
  model's current version as its base;
* ``running -> done``: the candidate blob is made durable first, then the
  version row, the round's verdict and (on promotion) the model's current
  pointer are written in one transaction -- a version is never half-written;
* ``running -> failed``: an error the owner must look at (they may retry);
* ``running -> pending``: an infrastructure fault, never the owner's: the
  enclave or the Ray cluster was unreachable, died or timed out, or Ray lost a
  worker it could not replace (retried with exponential backoff, without limit
  -- ``serve`` restarts the enclave), or the worker died: on start a worker
  redoes every round it left running, and any worker redoes a round whose
  heartbeat went stale.

A crash or ``kill -9`` at any point therefore loses nothing: an upload is
either committed (and will be used) or was never acknowledged, and a round
is either done, or will run again from the start.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ..ckks import PublicContext
from ..errors import CipherloopError, EnclaveUnavailable, EngineUnavailable
from ..learn import EnclaveClient
from ..learn.dataset import blob_names, store_blocks
from ..learn.wire import decode_samples
from . import crud
from .blobs import BlobStore
from .db import Round, make_engine, make_sessionmaker, utcnow
from .keys import ContextCache
from .refiner import EngineFactory, LearnRefiner, Refiner, RoundSpec, SampleSet, StoredSamples
from .settings import Settings
from .supervise import die_with_parent

log = logging.getLogger("cipherloop.cloud.worker")


class _Heartbeat:
    """Refreshes a running round's lease from a side thread while the round computes."""

    def __init__(self, sessions: sessionmaker[Session], rnd: Round, *, worker_id: str,
                 interval: float, clock: Callable[[], datetime]) -> None:
        self._sessions = sessions
        self._round_id = rnd.id
        self._attempt = rnd.attempts
        self._worker_id = worker_id
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="round-heartbeat", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with self._sessions() as s:
                    crud.heartbeat(s, round_id=self._round_id, worker_id=self._worker_id,
                                   attempt=self._attempt, now=self._clock())
            except Exception as exc:  # a missed beat only risks a redo, never a loss
                log.warning("heartbeat failed: %s", type(exc).__name__)


class Worker:
    """Runs refinement rounds from the database, one at a time.

    Parameters
    ----------
    sessions : sessionmaker
        Sessions on the service's database.
    blobs : BlobStore
        The ciphertext store.
    refiner : Refiner
        Does the encrypted work.
    settings : Settings
        ``worker_id``, ``lease_s``, ``max_attempts``, ``retry_backoff_s``,
        ``poll_interval_s`` and ``max_body_bytes`` are used.
    contexts : ContextCache, optional
        Loaded public contexts; a fresh cache by default.
    clock : callable, optional
        Returns the current aware UTC time (tests inject one).
    """

    def __init__(self, *, sessions: sessionmaker[Session], blobs: BlobStore, refiner: Refiner,
                 settings: Settings, contexts: ContextCache | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.sessions = sessions
        self.blobs = blobs
        self.refiner = refiner
        self.settings = settings
        self.contexts = contexts or ContextCache(blobs, size=settings.context_cache)
        self.clock = clock
        self.worker_id = settings.worker_id

    def __repr__(self) -> str:
        return f"Worker(worker_id={self.worker_id!r})"

    # -- the loop ------------------------------------------------------------
    def recover(self) -> int:
        """Redo every round this worker left running (it restarted, so they died)."""
        with self.sessions() as s:
            n = crud.requeue_running(s, worker_id=self.worker_id, now=self.clock())
        if n:
            log.info("redoing %d round(s) left running by a previous run", n)
        return n

    def tick(self) -> Round | None:
        """One pass: requeue stale rounds, schedule triggered ones, run one due round.

        Returns
        -------
        Round or None
            The round run (in its final state for this attempt), or ``None``.
        """
        now = self.clock()
        with self.sessions() as s:
            stale = crud.expire_stale(s, lease=timedelta(seconds=self.settings.lease_s), now=now)
            if stale:
                log.info("redoing %d round(s) whose worker stopped beating", stale)
            for rnd in crud.schedule_rounds(s, now=now):
                log.info("round %s of model %s: triggered by %s", rnd.number, rnd.model_id,
                         rnd.trigger)
            claimed = crud.claim_round(s, worker_id=self.worker_id, now=now)
        if claimed is None:
            return None
        self.run_round(claimed)
        with self.sessions() as s:
            return s.get(Round, claimed.id)

    def run(self, stop: threading.Event) -> None:
        """Recover, then tick until ``stop`` is set."""
        self.recover()
        while not stop.is_set():
            try:
                ran = self.tick()
            except Exception:
                log.exception("worker pass failed; retrying")
                ran = None
            if ran is None:
                stop.wait(self.settings.poll_interval_s)

    def retry_delay(self, attempt: int) -> float:
        """Wait before the next try of a round an infrastructure fault interrupted."""
        s = self.settings
        return float(min(s.retry_backoff_max_s, s.retry_backoff_s * 2 ** max(0, attempt - 1)))

    # -- one round -----------------------------------------------------------
    def _samples(self, sha256: str) -> SampleSet:
        features, labels = decode_samples(self.blobs.read(sha256),
                                          max_bytes=self.settings.max_body_bytes)
        return SampleSet(features, labels)

    def _stored(self, context: PublicContext, sha256: str) -> StoredSamples:
        """An upload as per-block blobs, split on first use (one upload in memory at a time).

        The upload blob stays the durable record; the blocks and the link to
        their manifest are a derived index, rebuilt from it if missing.
        """
        name = f"blocks-{sha256}"
        manifest = self.blobs.resolve(name)
        if manifest is not None and not all(
                self.blobs.exists(b) for b in blob_names(self.blobs.read(manifest))):
            manifest = None  # a block went missing: rebuild the index from the upload
        if manifest is None:
            upload = self._samples(sha256)
            manifest = store_blocks(context, self.blobs, upload.features, upload.labels)
            del upload
            self.blobs.link(name, manifest)
        return StoredSamples(self.blobs, manifest)

    def run_round(self, rnd: Round) -> None:
        """Run a claimed round to done, failed or back to pending. Never raises for the round."""
        attempt = rnd.attempts
        owner: dict[str, Any] = {"round_id": rnd.id, "worker_id": self.worker_id,
                                 "attempt": attempt}
        beat = max(0.05, self.settings.lease_s / 4)
        try:
            with _Heartbeat(self.sessions, rnd, worker_id=self.worker_id, interval=beat,
                            clock=self.clock):
                self._run_round(rnd, owner)
        except (EnclaveUnavailable, EngineUnavailable) as exc:
            # The enclave died, hung or restarts, or Ray lost its workers: not the owner's
            # failure. The round goes back to the queue, to run again once it is back.
            delay = self.retry_delay(attempt)
            what = "enclave" if isinstance(exc, EnclaveUnavailable) else "engine"
            log.warning("round %s: %s unavailable; retry in %.1fs", rnd.id, what, delay)
            with self.sessions() as s:
                crud.retry_later(s, error=str(exc),
                                 not_before=self.clock() + timedelta(seconds=delay), **owner)
        except CipherloopError as exc:
            log.warning("round %s failed: %s", rnd.id, exc)
            with self.sessions() as s:
                crud.fail_round(s, error=str(exc) or type(exc).__name__, now=self.clock(),
                                **owner)
        except Exception as exc:
            log.exception("round %s failed unexpectedly", rnd.id)
            with self.sessions() as s:
                crud.fail_round(s, error=f"internal error ({type(exc).__name__})",
                                now=self.clock(), **owner)

    def _run_round(self, rnd: Round, owner: dict[str, Any]) -> None:
        tenant_id = rnd.tenant_id
        with self.sessions() as s:
            model = crud.get_model(s, tenant_id=tenant_id, model_id=rnd.model_id)
            if model is None or rnd.base_version_id is None or rnd.spec is None:
                raise CipherloopError("the round's model or base version is gone")
            context = crud.get_context(s, tenant_id=tenant_id, context_id=model.context_id)
            base = crud.get_version(s, tenant_id=tenant_id, model_id=model.id,
                                    version_id=rnd.base_version_id)
            data = crud.round_data(s, tenant_id=tenant_id, round_id=rnd.id)
            holdout = None if rnd.holdout_id is None else crud.get_upload(
                s, tenant_id=tenant_id, model_id=model.id, upload_id=rnd.holdout_id)
        if context is None or base is None or not data:
            raise CipherloopError("the round's inputs are incomplete")
        spec = RoundSpec.from_dict(rnd.spec)
        public = self.contexts.get(context.sha256)
        result = self.refiner.refine_round(
            public,
            self.blobs.read(base.sha256),
            [self._stored(public, u.sha256) for u in data],
            None if holdout is None else self._samples(holdout.sha256),
            spec,
        )
        digest = self.blobs.put(result.candidate)  # durable before the row that names it
        with self.sessions() as s:
            version = crud.finish_round(
                s, sha256=digest, nbytes=len(result.candidate), decision=result.decision,
                reason=result.reason, metrics=result.metrics if spec.release_metric else None,
                stats=result.stats, now=self.clock(), **owner)
        if version is None:
            log.warning("round %s: lease lost while running; another attempt owns it", rnd.id)
        else:
            log.info("round %s of model %s: %s (version %d)", rnd.number, rnd.model_id,
                     version.decision, version.number)


def engine_factory(settings: Settings) -> EngineFactory | None:
    """The engine rounds run on: ``None`` (a local engine per round) or one shared Ray engine.

    An unreachable Ray cluster is logged here, clearly, and is not fatal: the
    HTTP server keeps taking uploads, and each round that finds no cluster
    goes back to pending and is retried later, with backoff.
    """
    if settings.engine == "local":
        return None
    from ..learn.ray_engine import RayEngine  # the optional extra, imported only when asked

    engine = RayEngine(address=settings.ray_address, n_workers=settings.ray_workers)
    try:
        engine.connect()
        log.info("rounds run on Ray (%d workers)", settings.ray_workers)
    except EngineUnavailable as exc:
        log.error("%s; uploads are still accepted, rounds wait and retry", exc)
    return lambda context: engine.connect()


def worker_main(settings: Settings, parent_pid: int | None = None) -> None:
    """Entry point of the worker process: build everything from settings, run until stopped.

    Parameters
    ----------
    settings : Settings
        ``enclave_address`` must name the running enclave.
    parent_pid : int, optional
        Exit when this process (the server) is gone.
    """
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s worker %(levelname)s %(message)s")
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        # Exit now: a round left running is redone on restart, so waiting buys nothing.
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if parent_pid is not None:  # no orphaned workers, even after ``kill -9`` of the server
        die_with_parent(parent_pid)
    engine = make_engine(settings.db_url)
    blobs = BlobStore(settings.blob_dir)
    enclave = None if settings.enclave_address is None else EnclaveClient(
        settings.enclave_address)
    refiner = LearnRefiner(enclave, engine=engine_factory(settings))
    try:
        Worker(sessions=make_sessionmaker(engine), blobs=blobs, refiner=refiner,
               settings=settings).run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        refiner.close()
        engine.dispose()

"""The service's settings: one frozen dataclass, read from ``CIPHERLOOP_*`` variables.

Runs in: host. Built once in ``main``/:func:`cipherloop.cloud.server.serve` and
passed down; nothing in ``cipherloop.cloud`` reads the environment at import
time, so tests build a :class:`Settings` directly and need no environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "CIPHERLOOP_"
MIN_ADMIN_TOKEN_CHARS = 16


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected a boolean (true/false)")


def _optional_str(text: str) -> str | None:
    return text or None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "str | None": _optional_str,
    "int": int,
    "float": float,
    "bool": _bool,
    "Path": Path,
}


@dataclass(frozen=True)
class Settings:
    """Everything the service process is configured with.

    Parameters
    ----------
    admin_token : str
        Bearer token of the admin endpoints (tenant creation). Required, at
        least 16 characters; never printed (``repr`` redacts it).
    data_dir : Path
        Holds the SQLite database (unless ``database_url`` says otherwise),
        the ciphertext blob store, and the state of the enclave the service
        starts (``enclave/``: its socket, platform files and sealed keys).
    database_url : str or None
        SQLAlchemy URL; ``None`` means SQLite in ``data_dir``. PostgreSQL
        works as ``postgresql+psycopg://user:password@host/db``.
    host, port : str, int
        Where the HTTP server listens.
    max_body_bytes : int
        Largest request body accepted; checked from ``Content-Length`` before
        reading and again while streaming.
    poll_interval_s : float
        How often the worker looks for triggered or pending rounds.
    lease_s : float
        A running round whose heartbeat is older than this is redone.
    max_attempts : int
        Kept for compatibility; infrastructure faults (an unavailable, dead or
        hung enclave, a dead worker) never fail a round: it is retried.
    retry_backoff_s : float
        Wait before the first retry of a round that met an unavailable
        enclave; doubled at every further attempt.
    retry_backoff_max_s : float
        The longest wait between such retries.
    restart_backoff_s : float
        Wait before restarting a dead enclave or worker; doubled at every
        failure in a row (up to 30 s).
    worker_id : str
        Stable name of this worker; on start it redoes rounds it left running.
        Workers sharing one database need distinct ids (a round of another
        worker is redone only once its heartbeat is ``lease_s`` old).
    run_worker : bool
        Whether :func:`~cipherloop.cloud.server.serve` runs the round worker.
    enclave_address : str or None
        Address of a running enclave; ``None`` starts one alongside the service.
    context_cache : int
        Public contexts kept loaded (each is tens of MB).
    engine : str
        Where a round's kernels run: ``"local"`` (the worker process, streaming
        blocks from the store) or ``"ray"`` (a Ray cluster; needs
        ``cipherloop[ray]``, and a blob store every node can read).
    ray_address : str or None
        The Ray cluster's head (``host:port``); ``None`` starts a local cluster.
    ray_workers : int
        Ray actors a round's blocks are sharded over.
    log_level : str
        Log level of the server and worker.
    """

    admin_token: str = field(repr=False)
    data_dir: Path = Path("cipherloop-data")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 256 * 1024 * 1024
    poll_interval_s: float = 1.0
    lease_s: float = 60.0
    max_attempts: int = 3
    retry_backoff_s: float = 5.0
    retry_backoff_max_s: float = 60.0
    restart_backoff_s: float = 0.5
    worker_id: str = "local"
    run_worker: bool = True
    enclave_address: str | None = None
    context_cache: int = 4
    log_level: str = "info"
    engine: str = "local"
    ray_address: str | None = None
    ray_workers: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.admin_token, str) or len(self.admin_token) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"admin_token must be a string of at least {MIN_ADMIN_TOKEN_CHARS} characters"
            )
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        if (self.poll_interval_s <= 0 or self.lease_s <= 0 or self.retry_backoff_s < 0
                or self.retry_backoff_max_s < self.retry_backoff_s or self.restart_backoff_s < 0):
            raise ValueError("poll_interval_s and lease_s must be positive")
        if self.max_attempts < 1 or self.context_cache < 1:
            raise ValueError("max_attempts and context_cache must be at least 1")
        if self.engine not in ("local", "ray"):
            raise ValueError("engine must be 'local' or 'ray'")
        if self.ray_workers < 1:
            raise ValueError("ray_workers must be at least 1")

    @property
    def db_url(self) -> str:
        """The database URL actually used."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cipherloop.db').resolve()}"

    @property
    def enclave_dir(self) -> Path:
        """State of the enclave the service starts: platform files and sealed keys."""
        return self.data_dir / "enclave"

    @property
    def blob_dir(self) -> Path:
        """Root of the content-addressed ciphertext store."""
        return self.data_dir / "blobs"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``CIPHERLOOP_<FIELD>`` variables; keyword overrides (CLI flags) win.

        Parameters
        ----------
        environ : mapping, optional
            The environment to read; ``os.environ`` when omitted.
        **overrides
            Field values that replace the environment's; ``None`` values are ignored.

        Returns
        -------
        Settings

        Raises
        ------
        ValueError
            A variable does not parse, or ``CIPHERLOOP_ADMIN_TOKEN`` is missing.

        Examples
        --------
        >>> Settings.from_env({"CIPHERLOOP_ADMIN_TOKEN": "x" * 32, "CIPHERLOOP_PORT": "9000"}).port
        9000
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name not in env:
                continue
            parse = _PARSERS[str(f.type)]
            try:
                values[f.name] = parse(env[name])
            except ValueError:
                raise ValueError(f"{name} does not parse as {f.type}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "admin_token" not in values:
            raise ValueError(f"{ENV_PREFIX}ADMIN_TOKEN must be set to run the service")
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)

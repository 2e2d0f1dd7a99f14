"""Load on the real service: concurrent contributors upload while a refinement round runs.

Starts ``python -m cipherloop.cloud.server`` (SQLite and blobs in a temporary
directory, the simulated enclave, loopback only), then, through the HTTP API
alone: creates a tenant, registers its public context, provisions the key by
attestation through the service's relay, creates a model whose policy starts
a round after N samples, and uploads a first version and a hold-out set. The
owner's trigger uploads start a round; as soon as it runs, K contributor
threads (each with its own httpx client and contributor token) upload small
encrypted sample sets, encrypted before the clock starts.

Prints uploads/s, p50/p99 upload latency, the round's wall time (and how much
of the upload phase it overlapped), and checks that nothing was lost: every
acknowledged upload is listed by the API, nothing else is, and every upload
is either used by a round or pending. Exit status 1 if a check fails.

Run: ``.venv/bin/python bench/service_load.py`` (``--quick`` for ~30 s).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cipherloop.ckks import SecretContext, preset, rotations_for_features
from cipherloop.client.data import encrypt_batches, encrypt_model, upload_body
from cipherloop.client.provisioning import holdout_pin, provision, simulated_policy
from cipherloop.client.service import ServiceClient
from cipherloop.cloud.process import ServiceProcess
from cipherloop.learn.wire import encode_samples

ADMIN = "service-load-admin-token-0123456789"


@dataclass(frozen=True)
class Config:
    contributors: int
    uploads_each: int
    samples_each: int
    features: int
    trigger: int
    epochs: int
    batch_size: int
    timeout_s: float


def _config(a: argparse.Namespace) -> Config:
    if a.quick:
        base = Config(contributors=4, uploads_each=30, samples_each=32, features=4, trigger=2048,
                      epochs=4, batch_size=64, timeout_s=120)
    else:
        base = Config(contributors=8, uploads_each=50, samples_each=32, features=4, trigger=4096,
                      epochs=6, batch_size=64, timeout_s=300)
    overrides = {k: v for k, v in vars(a).items() if k in Config.__dataclass_fields__ and v}
    return Config(**{**base.__dict__, **overrides})


def _wait(what: Callable[[], Any], *, timeout: float, step: float = 0.1, label: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {label}")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X @ np.linspace(1.0, -1.0, d) > 0).astype(np.float64)


def _epoch(stamp: str) -> float:
    """An API timestamp (UTC) as Unix seconds."""
    when = datetime.fromisoformat(stamp)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _seconds(rnd: dict[str, Any]) -> float:
    start, end = rnd.get("started_at"), rnd.get("finished_at")
    if not start or not end:
        return float("nan")
    return _epoch(end) - _epoch(start)


@dataclass
class Upload:
    contributor: int
    body: bytes
    latency: float = 0.0
    status: int = 0
    upload_id: str | None = None
    done_at: float = 0.0


def _contribute(url: str, model_id: str, token: str, uploads: list[Upload],
                start: threading.Barrier) -> None:
    """One contributor: its own client and token, its uploads one after another."""
    with httpx.Client(base_url=url, timeout=120, headers=_bearer(token)) as c:
        start.wait()
        for up in uploads:
            t0 = time.perf_counter()
            try:
                r = c.post(f"/v1/models/{model_id}/uploads", content=up.body)
                up.status = r.status_code
                if r.status_code in (200, 201):
                    up.upload_id = r.json()["id"]
            except httpx.HTTPError:
                up.status = -1
            up.latency = time.perf_counter() - t0
            up.done_at = time.monotonic()


def run(cfg: Config, server: ServiceProcess, data_dir: Path) -> int:
    c = httpx.Client(base_url=server.url, timeout=120)
    t0 = time.perf_counter()
    key = SecretContext.generate(preset("n8192"), rotations_for_features(cfg.features, 4096))
    public = key.public_context()
    t_key = time.perf_counter() - t0

    made = c.post("/v1/admin/tenants", json={"name": "load"}, headers=_bearer(ADMIN))
    made.raise_for_status()
    owner = _bearer(made.json()["owner_token"])
    ctx = c.post("/v1/contexts", content=public.serialize(), headers=owner)
    ctx.raise_for_status()
    info = c.get("/v1/enclave", headers=owner).json()
    t0 = time.perf_counter()
    hold = encrypt_batches(key, *_data(256, cfg.features, seed=1))  # pinned in the policy
    with ServiceClient(server.url, made.json()["owner_token"]) as relay:
        verified = provision(relay, key, simulated_policy(data_dir / "enclave"),
                             policy={"release": ["accuracy", "log_loss"], "min_samples": 16,
                                     "holdouts": [holdout_pin(*hold)]},
                             quiet_simulation=True)
    t_prov = time.perf_counter() - t0
    policy = {"trigger_min_samples": cfg.trigger, "epochs": cfg.epochs,
              "batch_size": cfg.batch_size, "learning_rate": 1.0, "momentum": 0.5}
    model = c.post("/v1/models", headers=owner, json={"name": "load", "n_features": cfg.features,
                                                      "context_id": ctx.json()["id"],
                                                      "policy": policy})
    model.raise_for_status()
    m = model.json()["id"]
    c.post(f"/v1/models/{m}/versions", headers=owner,
           content=encrypt_model(public, np.zeros(cfg.features), 0.0).to_bytes(public)
           ).raise_for_status()
    c.post(f"/v1/models/{m}/uploads?kind=holdout", headers=owner,
           content=encode_samples(*hold)).raise_for_status()
    tokens = [c.post("/v1/tokens", json={"role": "contributor", "label": f"device-{i}"},
                     headers=owner).json()["token"] for i in range(cfg.contributors)]

    # Everything encrypted before the clock starts; contributors hold only the public context.
    t0 = time.perf_counter()
    trigger_bodies = [upload_body(key, *_data(256, cfg.features, seed=100 + i))
                      for i in range(-(-cfg.trigger // 256))]
    work = [[Upload(i, upload_body(public, *_data(cfg.samples_each, cfg.features,
                                                  seed=1000 + i * cfg.uploads_each + j)))
             for j in range(cfg.uploads_each)] for i in range(cfg.contributors)]
    t_enc = time.perf_counter() - t0
    n_uploads = cfg.contributors * cfg.uploads_each
    body_mb = len(work[0][0].body) / 1e6

    print(f"service_load: {cfg.contributors} contributors x {cfg.uploads_each} uploads of "
          f"{cfg.samples_each} samples x {cfg.features} features; round after {cfg.trigger} "
          f"samples, {cfg.epochs} epochs, batch {cfg.batch_size}")
    print(f"enclave: {info['platform']} (simulated={info['simulated']}: NOT a TEE), "
          f"measurement {info['measurement'][:16]}...; attested provisioning via the relay "
          f"{t_prov * 1000:.0f} ms (verified simulated={verified.simulated})")
    print(f"setup: key {t_key:.1f} s; pre-encrypted {n_uploads} uploads of {body_mb:.2f} MB "
          f"and {len(trigger_bodies)} trigger uploads in {t_enc:.1f} s")

    acked: list[str] = []
    for body in trigger_bodies:
        r = c.post(f"/v1/models/{m}/uploads", content=body, headers=owner)
        r.raise_for_status()
        acked.append(r.json()["id"])

    def rounds() -> list[dict[str, Any]]:
        return list(c.get(f"/v1/models/{m}/rounds", headers=owner).json())

    first = _wait(lambda: [r for r in rounds() if r["state"] == "running"],
                  timeout=cfg.timeout_s, step=0.05, label="the triggered round to run")[0]

    start = threading.Barrier(cfg.contributors + 1)
    threads = [threading.Thread(target=_contribute, args=(server.url, m, tokens[i], work[i], start),
                                name=f"contributor-{i}") for i in range(cfg.contributors)]
    for t in threads:
        t.start()
    start.wait()
    t_start, t_wall = time.time(), time.perf_counter()
    for t in threads:
        t.join(timeout=cfg.timeout_s)
    elapsed = time.perf_counter() - t_wall
    t_end = time.time()
    uploads = [u for per in work for u in per]
    ok = [u for u in uploads if u.status == 201]
    lat = np.array([u.latency for u in ok]) * 1000
    acked += [u.upload_id for u in ok if u.upload_id]

    def first_finished() -> dict[str, Any] | None:
        r = next(r for r in rounds() if r["id"] == first["id"])
        return r if r["state"] in ("done", "failed") else None

    rnd = _wait(first_finished, timeout=cfg.timeout_s, step=0.05, label="the round to finish")
    overlap = (min(_epoch(rnd["finished_at"]), t_end) - t_start) / max(t_end - t_start, 1e-9)

    print(f"uploads: {len(ok)}/{n_uploads} acknowledged in {elapsed:.2f} s -> "
          f"{len(ok) / elapsed:.1f} uploads/s, {len(ok) * body_mb / elapsed:.1f} MB/s, "
          f"{len(ok) * cfg.samples_each / elapsed:.0f} samples/s")
    if len(lat):
        print(f"upload latency: p50 {np.percentile(lat, 50):.0f} ms, p99 "
              f"{np.percentile(lat, 99):.0f} ms, max {lat.max():.0f} ms")
    print(f"round {rnd['number']}: {rnd['state']} ({rnd['decision']}), wall {_seconds(rnd):.1f} s "
          f"(started -> finished), {rnd['stats']['steps'] if rnd['stats'] else '?'} steps, "
          f"ran during {max(overlap, 0.0):.0%} of the upload phase")

    def snapshot() -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Uploads and rounds as of one moment: no round was created or moved while reading."""
        before = {r["id"]: r["state"] for r in rounds()}
        listed = c.get(f"/v1/models/{m}/uploads", headers=owner).json()
        after = {r["id"]: r for r in rounds()}
        if before != {k: r["state"] for k, r in after.items()}:
            return None
        return {u["id"]: u for u in listed if u["kind"] == "data"}, after

    data_rows, all_rounds = _wait(snapshot, timeout=cfg.timeout_s, step=0.05,
                                  label="a consistent view of uploads and rounds")
    used = [u for u in data_rows.values() if u["round_id"] is not None]
    in_done = sum(1 for u in used if all_rounds[u["round_id"]]["state"] == "done")
    in_flight = sum(1 for u in used if all_rounds[u["round_id"]]["state"] in ("pending", "running"))
    in_failed = len(used) - in_done - in_flight
    pending = len(data_rows) - len(used)
    refused = [u.status for u in uploads if u.status != 201]
    checks = {
        "every upload acknowledged": not refused,
        "acknowledged == listed": set(acked) == set(data_rows) and len(acked) == len(data_rows),
        "each upload used by a round or pending": in_failed == 0
        and in_done + in_flight + pending == len(data_rows),
        "first round done": rnd["state"] == "done",
    }
    print(f"check: acknowledged {len(acked)}, listed {len(data_rows)}; used by done rounds "
          f"{in_done}, in a pending/running round {in_flight}, pending {pending}, in failed "
          f"rounds {in_failed}; rounds {sorted(r['state'] for r in all_rounds.values())}")
    for name, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {name}")
    if refused:
        print(f"  refused statuses: {sorted(set(refused))}")
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a ~30 s run")
    p.add_argument("--contributors", type=int, help="concurrent contributor threads (K)")
    p.add_argument("--uploads-each", type=int, help="uploads per contributor")
    p.add_argument("--samples-each", type=int, help="samples per upload")
    p.add_argument("--trigger", type=int, help="samples that start a round (N)")
    p.add_argument("--epochs", type=int, help="epochs per round")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    a = p.parse_args(argv)
    cfg = _config(a)
    tmp = Path(tempfile.mkdtemp(prefix="cl-load-"))  # short: the enclave socket lives inside
    server = ServiceProcess(tmp / "data", admin_token=ADMIN, poll_interval_s=0.1,
                            log_path=tmp / "service.log",
                            env={"CIPHERLOOP_LOG_LEVEL": "warning"}).start()
    try:
        return run(cfg, server, tmp / "data")
    finally:
        server.stop()
        if a.keep:
            print(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

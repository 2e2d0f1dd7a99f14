"""Scaling past one machine: streamed blocks, RayEngine, parallel encryption, and a projection.

Prints, for n = 4,096, 16,384 and 65,536 samples at 768 features (binary
logistic regression, the owner's seeded encryption, mini-batches of 16,384):

* encryption throughput (samples/s) with 1 and 2 processes;
* seconds per epoch and peak resident memory of a round with the local engine
  streaming blocks from the blob store (each run in a fresh process, peak =
  its ``VmHWM``), and with every block kept resident, for comparison;
* the same epoch on ``RayEngine`` with 1 and 2 workers on a local Ray cluster
  (warm: the epoch after the actors loaded their shards), its host part (wall
  time minus the enclave's), bytes moved between driver and workers per step;
* the enclave's share of wall time;
* a PROJECTION for 1M x 768 on 8, 32 and 128 cores from the measured per-block
  costs, with the enclave's throughput limit.

Run: ``.venv/bin/python bench/scale.py`` (``--sizes 4096`` for a smoke run;
``--no-ray`` skips Ray). Peak memory is the round's process only: the enclave
is a separate process (its memory is per step, not per data set).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cipherloop.blobstore import BlobStore
from cipherloop.ckks import PublicContext, Replicated, SecretContext, preset, rotations_for_features
from cipherloop.client.data import encrypt_batches, encrypt_to_store
from cipherloop.client.provisioning import provision, simulated_policy
from cipherloop.learn import EnclaveClient, EnclaveProcess, EncryptedModel, RefineConfig, refine
from cipherloop.learn.dataset import StreamedDataset, write_manifest
from cipherloop.learn.engine import LocalEngine

D = 768
BATCH = 16_384
GIB = 1 << 30


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)) / np.sqrt(D)
    y = (X @ rng.normal(size=D) > 0).astype(np.float64)
    return X, y


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _model(ctx: PublicContext) -> EncryptedModel:
    layout = Replicated.for_features(D, ctx.params.slots)
    return EncryptedModel(layout, ctx.encrypt(layout.pack(np.zeros(D))),
                          ctx.encrypt(Replicated(1, 1, layout.slots).pack(0.0)))


def child(args: list[str]) -> None:
    """Local-engine epochs in this fresh process; prints JSON (times, peak memory, loads).

    Epoch 1 is cold (blocks read as they are first needed); epoch 2, if asked,
    is warm (what stays resident is reused). The peak is taken before timing
    one more block read, so that read does not count in it.
    """
    ctx_path, store, manifest, socket, working_set, epochs = args
    ctx = PublicContext.load(Path(ctx_path).read_bytes())
    data = StreamedDataset.open(ctx, BlobStore(Path(store)), manifest)
    engine = LocalEngine(ctx, working_set=int(working_set))
    client = EnclaveClient(socket)
    config = RefineConfig(momentum=0.0, batch_size=BATCH, epochs=1)
    model = _model(ctx)
    runs = []
    for _ in range(int(epochs)):
        loads = engine.block_loads
        model, stats = refine(model, [data], config, context=ctx, enclave=client, engine=engine)
        runs.append({"seconds": stats.seconds, "enclave": stats.enclave_seconds,
                     "steps": stats.steps, "loads": engine.block_loads - loads})
    client.close()
    peak = _vm_hwm_mib()
    engine.close()
    t0 = time.perf_counter()
    data.block(data.layout.n_blocks - 1)
    load_s = time.perf_counter() - t0
    print(json.dumps({**runs[-1], "cold": runs[0]["seconds"], "peak_mib": peak, "load_s": load_s}))


@dataclass
class Size:
    n: int
    blocks: int
    manifest: str = ""
    local: dict[str, Any] = field(default_factory=dict)
    resident: dict[str, Any] = field(default_factory=dict)
    ray: dict[int, dict[str, Any]] = field(default_factory=dict)


def local_epoch(ctx_file: Path, store: BlobStore, manifest: str, socket: str,
                working_set: int, epochs: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", str(ctx_file), str(store.root),
                          manifest, socket, str(working_set), str(epochs)],
                         capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def ray_epochs(data: StreamedDataset, ctx: PublicContext, enclave: EnclaveClient,
               workers: int) -> dict[str, Any]:
    from cipherloop.learn.ray_engine import RayEngine
    engine = RayEngine(n_workers=workers, cpus_per_worker=1).connect()
    try:
        config = RefineConfig(momentum=0.0, batch_size=BATCH, epochs=1)
        model = _model(ctx)
        t0 = time.perf_counter()
        model, cold = refine(model, [data], config, context=ctx, enclave=enclave, engine=engine)
        cold_s = time.perf_counter() - t0
        before = (engine.traffic.to_workers, engine.traffic.from_workers, engine.traffic.steps,
                  engine.partial_bytes_between_workers())
        _, warm = refine(model, [data], config, context=ctx, enclave=enclave, engine=engine)
        steps = engine.traffic.steps - before[2]
        return {"cold": cold_s, "seconds": warm.seconds, "enclave": warm.enclave_seconds,
                "steps": steps,
                "to_workers": (engine.traffic.to_workers - before[0]) / steps,
                "from_workers": (engine.traffic.from_workers - before[1]) / steps,
                "between": (engine.partial_bytes_between_workers() - before[3]) / steps}
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16_384, 65_536])
    ap.add_argument("--no-ray", action="store_true", help="skip the RayEngine runs")
    ap.add_argument("--ray-max", type=int, default=16_384,
                    help="largest n run on Ray (its actors keep every block loaded)")
    ns = ap.parse_args()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    key = SecretContext.generate(preset("n8192"), rotations_for_features(D, 4096))
    tmp = Path(tempfile.mkdtemp(prefix="cipherloop-scale-"))
    try:
        run(ns, key, tmp, t_start, load_before)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gigabytes of ciphertext blocks


def run(ns: argparse.Namespace, key: SecretContext, tmp: Path, t_start: float,
        load_before: tuple[float, float, float]) -> None:
    """Every measurement, with its blob store under ``tmp``."""
    public = key.public_context()
    ctx_file = tmp / "context.bin"
    ctx_file.write_bytes(public.serialize())
    store = BlobStore(tmp / "blobs")

    # -- encryption throughput: one block per task, 1 and 2 processes ----------------
    n_enc = max(8192, min(max(ns.sizes), 16_384))  # at least two blocks, one per process
    X, y = synthetic(n_enc, seed=1)
    enc: dict[int, float] = {}
    for jobs in (1, 2):
        t0 = time.perf_counter()
        encrypt_batches(key, X, y, n_jobs=jobs)
        enc[jobs] = n_enc / (time.perf_counter() - t0)
    del X, y

    sizes: list[Size] = []
    with EnclaveProcess() as proc:
        provision(proc.client, key, simulated_policy(proc.state_dir), quiet_simulation=True)
        for n in ns.sizes:
            X, y = synthetic(n, seed=n)
            data = encrypt_to_store(key, X, y, store, n_jobs=2).under(public)
            del X, y
            s = Size(n, data.layout.n_blocks)
            s.manifest = write_manifest(public, store, data.layout, data.level,
                                        data.feature_blocks, data.label_blocks)
            socket = str(proc.socket_path)
            # The largest size once: streamed, every epoch reads its blocks again anyway.
            s.local = local_epoch(ctx_file, store, s.manifest, socket, GIB,
                                  1 if n > ns.ray_max else 2)
            if n <= ns.ray_max:
                s.resident = local_epoch(ctx_file, store, s.manifest, socket, 64 * GIB, 2)
            sizes.append(s)

        if not ns.no_ray:
            import ray
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            try:
                for s in sizes:
                    if s.n > ns.ray_max:
                        continue
                    data = StreamedDataset.open(public, store, s.manifest)
                    for workers in (1, 2):
                        s.ray[workers] = ray_epochs(data, public, proc.client, workers)
            finally:
                ray.shutdown()
    report(sizes, enc, time.perf_counter() - t_start, load_before, os.getloadavg())


def _mb(b: float) -> str:
    return f"{b / 1e6:8.1f}"


def report(sizes: list[Size], enc: dict[int, float], total: float,
           load_before: tuple[float, float, float], load_after: tuple[float, float, float]) -> None:
    print(f"\ncipherloop scale benchmark: {D} features, CKKS N=8192, batch {BATCH}, "
          f"seeded owner encryption")
    print(f"machine: {os.cpu_count()} cores; load average {load_before[0]:.1f} at start, "
          f"{load_after[0]:.1f} / {load_after[2]:.1f} (1 / 15 min) at the end -- above the core "
          "count, parallel speed-ups are capped by the CPU other processes take")
    print(f"\nencryption: 1 process {enc[1]:7.0f} samples/s, 2 processes {enc[2]:7.0f} samples/s "
          f"(x{enc[2] / enc[1]:.2f})")
    print("\nlocal engine, a fresh process per row (streamed: 1 GiB working set, i.e. one block "
          "of 768 features; resident: every block kept). epoch = the last epoch run (the 2nd, "
          "warm, where two ran; the only one, cold, for the largest n); cold = the 1st")
    print(f"{'n':>7} {'blocks':>6} {'cold s':>7} {'epoch s':>8} {'enclave':>8} {'loads':>6} "
          f"{'peak MiB':>9} {'load s':>7} | {'resident s':>10} {'peak MiB':>9}")
    for s in sizes:
        r, lo = s.resident, s.local
        res = f" {r['seconds']:10.1f} {r['peak_mib']:9.0f}" if r else f" {'-':>10} {'-':>9}"
        print(f"{s.n:>7} {s.blocks:>6} {lo['cold']:7.1f} {lo['seconds']:8.1f} "
              f"{lo['enclave'] / lo['seconds']:8.0%} {lo['loads']:>6} {lo['peak_mib']:9.0f} "
              f"{lo['load_s']:7.2f} |{res}")
    if any(s.ray for s in sizes):
        print("\nRayEngine on a local Ray cluster (warm epoch; host = wall - enclave; MB per step)")
        print(f"{'n':>7} {'workers':>7} {'cold s':>7} {'epoch s':>8} {'host s':>7} {'enclave':>8} "
              f"{'to wkrs':>8} {'from':>8} {'wkr-wkr':>8}")
        for s in sizes:
            for w, r in sorted(s.ray.items()):
                host = r["seconds"] - r["enclave"]
                print(f"{s.n:>7} {w:>7} {r['cold']:7.1f} {r['seconds']:8.1f} {host:7.1f} "
                      f"{r['enclave'] / r['seconds']:8.0%} {_mb(r['to_workers'])} "
                      f"{_mb(r['from_workers'])} {_mb(r['between'])}")
            if 1 in s.ray and 2 in s.ray and s.resident:
                h1 = s.ray[1]["seconds"] - s.ray[1]["enclave"]
                h2 = s.ray[2]["seconds"] - s.ray[2]["enclave"]
                print(f"{'':>7} ray-1 vs local resident: {s.ray[1]['seconds'] / s.resident['seconds']:.2f}x"
                      f" time; host part 1 -> 2 workers: x{h1 / h2:.2f}")
    projection(sizes)
    print(f"\n(whole benchmark: {total / 60:.1f} min)")


def projection(sizes: list[Size]) -> None:
    """PROJECTION for 1M x 768 from per-block costs of the largest measured sizes."""
    base = max((s for s in sizes if s.ray.get(1)), key=lambda s: s.n, default=None)
    if base is not None:
        r = base.ray[1]
        host_block = (r["seconds"] - r["enclave"]) / base.blocks
        enclave_block = r["enclave"] / base.blocks
        source = f"RayEngine 1 worker, n={base.n}"
    else:
        s = max(sizes, key=lambda s: s.n)
        host_block = (s.local["seconds"] - s.local["enclave"]) / s.blocks
        enclave_block = s.local["enclave"] / s.blocks
        source = f"local engine, n={s.n}"
    load_block = float(np.median([s.local["load_s"] for s in sizes]))
    n_blocks = -(-1_000_000 // 4096)
    block_gib = 1024 * 2 * 8192 * 4 * 8 / GIB
    print(f"\nPROJECTION (not measured): 1,000,000 x {D}, {n_blocks} blocks, one epoch, blocks "
          f"resident on the workers; from {source}:")
    print(f"  host products {host_block:.2f} s/block/core, enclave {enclave_block:.2f} s/block "
          f"(one enclave process), a block read from the store {load_block:.2f} s (once per "
          f"actor while it fits: {block_gib:.2f} GiB/block)")
    print(f"  enclave throughput limit: {1 / enclave_block:.1f} blocks/s = "
          f"{4096 / enclave_block:,.0f} samples/s, i.e. >= {n_blocks * enclave_block:.0f} s per "
          f"epoch whatever the cores")
    print(f"{'cores':>7} {'host s':>8} {'enclave s':>10} {'epoch s':>8} {'enclave share':>14} "
          f"{'GiB/core':>9}")
    for cores in (8, 32, 128):
        host = n_blocks * host_block / cores
        encl = n_blocks * enclave_block
        print(f"{cores:>7} {host:8.0f} {encl:10.0f} {host + encl:8.0f} "
              f"{encl / (host + encl):14.0%} {n_blocks * block_gib / cores:9.1f}")
    print(f"  the enclave is the bottleneck from ~{host_block / enclave_block:.0f} cores on: "
          "past that, one enclave per node (DESIGN.md, Scale)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()

"""The main job on embedded defaults: an autonomous, encrypted refining service at work.

Runs in: owner and contributor (this process), host (a ``cipherloop.cloud.server``
process: HTTP API, round worker, SQLite and a blob store) and enclave (its own
process, simulated TEE platform).

The story, on scikit-learn's breast-cancer data (binary logistic regression)
or its 8x8 digits (``data="digits"``: multinomial logistic regression over
10 classes, softmax computed in the enclave): the owner trains an initial
model on a small first slice at home, starts nothing but a key: it registers
its public context, verifies the enclave and releases the key to it, uploads
the encrypted initial model, an encrypted hold-out set and a policy ("refine
after N new samples"), hands a contributor token to a device, and goes
offline. The device uploads encrypted samples in rounds; the service refines
the encrypted model on its own after each, has the enclave judge candidate
against current on the hold-out set, and promotes or keeps. At the end the
owner comes back, pulls every version and decrypts it, and scores it on a
held-out test set next to the same algorithm run in plaintext, with the same
hyperparameters and the same promote/keep decisions.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from .attest import VerifiedEvidence
from .ckks import PublicContext, SecretContext, preset, rotations_for_features
from .client.data import dataset_size, decrypt_model, encrypt_batches, encrypt_model, upload_body
from .client.network import decrypt_network, encrypt_network, initial_network
from .client.provisioning import holdout_pin, provision, simulated_policy
from .client.service import ServiceClient
from .cloud.process import ServiceProcess
from .errors import CipherloopError
from .learn import RefineConfig
from .learn.model import EncryptedModel
from .learn.network import EncryptedNetwork
from .learn.reference import PlainModel, PlainNetwork, plain_network_refine, plain_refine
from .learn.wire import encode_samples


@dataclass(frozen=True)
class DemoConfig:
    rounds: int = 6
    first_slice: int = 30
    holdout: int = 60
    epochs_per_round: int = 8
    learning_rate: float = 1.0
    momentum: float = 0.9
    batch_size: int | None = None
    params: str = "n8192"
    seed: int = 7
    round_timeout_s: float = 300.0
    data: str = "breast_cancer"

    @property
    def n_classes(self) -> int:
        return 10 if self.data == "digits" else 2


@dataclass
class RoundResult:
    round: int
    samples_seen: int
    decision: str
    holdout_metric: float | None
    encrypted_accuracy: float
    plaintext_accuracy: float
    max_weight_gap: float
    seconds: float


@dataclass
class DemoData:
    test: tuple[np.ndarray, np.ndarray]
    holdout: tuple[np.ndarray, np.ndarray]
    first: tuple[np.ndarray, np.ndarray]
    rounds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


def split(config: DemoConfig) -> DemoData:
    """Shuffle; hold out test and hold-out sets; cut a first slice and equal rounds."""
    if config.data == "digits":
        X, y = load_digits(return_X_y=True)
        X = X / 16.0  # pixel intensities 0..16
    else:
        X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y.astype(np.float64), test_size=0.25,
                                              random_state=config.seed, stratify=y)
    if config.data != "digits":
        scaler = StandardScaler().fit(X_tr[: config.first_slice])
        X_tr, X_te = np.clip(scaler.transform(X_tr), -8, 8), np.clip(scaler.transform(X_te), -8, 8)
    k, h = config.first_slice, config.holdout
    chunks = np.array_split(np.arange(k + h, len(y_tr)), config.rounds)
    return DemoData((X_te, y_te), (X_tr[k:k + h], y_tr[k:k + h]), (X_tr[:k], y_tr[:k]),
                    [(X_tr[c], y_tr[c]) for c in chunks])


SAMPLE_SPLIT = {"owner": 80, "holdout": 80, "new-samples": 260}


def sample_split(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw breast-cancer data cut the README's way: owner, hold-out, new samples, patients.

    Stratified, deterministic for a seed; the patients are the remaining 149.
    """
    X, y = load_breast_cancer(return_X_y=True)
    y = y.astype(np.float64)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, n in SAMPLE_SPLIT.items():
        X_take, X, y_take, y = train_test_split(X, y, train_size=n, random_state=seed, stratify=y)
        out[name] = (X_take, y_take)
    out["patients"] = (X, y)
    return out


def write_sample_csvs(folder: Path, *, seed: int = 0) -> list[Path]:
    """Write :func:`sample_split` as CSVs with a header line (label last; patients unlabelled)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [n.replace(" ", "_") for n in load_breast_cancer().feature_names]
    written = []
    for name, (X, y) in sample_split(seed).items():
        if name == "patients":
            written.append(_write_csv(folder / "patients.csv", names, X))
            written.append(_write_csv(folder / "patients-labels.csv", ["label"], y[:, None]))
        else:
            written.append(_write_csv(folder / f"{name}.csv", [*names, "label"],
                                      np.column_stack([X, y])))
    return written


def _write_csv(path: Path, header: list[str], rows: np.ndarray) -> Path:
    np.savetxt(path, rows, delimiter=",", fmt="%.10g", header=",".join(header), comments="")
    return path


def accuracy(w: np.ndarray, b: float, data: tuple[np.ndarray, np.ndarray]) -> float:
    X, y = data
    return float(np.mean((X @ w + b > 0) == (y > 0.5)))


class _Kind:
    """The demo's model, binary (``PlainModel``) or multinomial (``PlainNetwork``), at home."""

    def __init__(self, config: DemoConfig, d: int) -> None:
        self.k, self.d = config.n_classes, d

    def start(self) -> Any:
        if self.k == 2:
            return PlainModel(np.zeros(self.d))
        return initial_network("softmax", self.d, self.k)

    def refine(self, model: Any, data: tuple[np.ndarray, np.ndarray], cfg: RefineConfig) -> Any:
        if self.k == 2:
            return plain_refine(model, [data], cfg)
        return plain_network_refine(model, [data], cfg)

    def without_momentum(self, model: Any) -> Any:
        """What the owner uploads: weights only (the service starts without a velocity)."""
        if self.k == 2:
            return PlainModel(model.coef, model.intercept)
        return PlainNetwork(model.kind, dict(model.weights), model.activation)

    def encrypt(self, key: SecretContext, model: Any) -> bytes:
        if self.k == 2:
            return encrypt_model(key, model.coef, model.intercept).to_bytes(key)
        return encrypt_network(key, model).to_bytes(key)

    def decrypt(self, key: SecretContext, blob: bytes) -> Any:
        if self.k == 2:
            return PlainModel(*decrypt_model(key, EncryptedModel.from_bytes(key, blob)))
        return decrypt_network(key, EncryptedNetwork.from_bytes(key, blob))

    def accuracy(self, model: Any, data: tuple[np.ndarray, np.ndarray]) -> float:
        if self.k == 2:
            return accuracy(model.coef, model.intercept, data)
        return float(np.mean(model.scores(data[0]).argmax(axis=1) == data[1]))

    def gap(self, a: Any, b: Any) -> float:
        if self.k == 2:
            return float(np.max(np.abs(a.coef - b.coef)))
        return max(float(np.abs(a.weights[n] - w).max()) for n, w in b.weights.items())


def _wait_for_round(owner: ServiceClient, model_id: str, done_before: int, timeout: float
                    ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = [r for r in owner.rounds(model_id) if r["state"] in ("done", "failed")]
        if len(finished) > done_before:
            rnd = max(finished, key=lambda r: r["number"])
            if rnd["state"] == "failed":
                raise CipherloopError(f"round {rnd['number']} failed: {rnd['error']}")
            return rnd
        time.sleep(0.3)
    raise CipherloopError("the service did not finish a round in time")


Progress = Callable[[str, int, int], None]


def run(config: DemoConfig, workdir: Path, *,
        on_attested: Callable[[VerifiedEvidence], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        on_round: Callable[[RoundResult], None] | None = None,
        on_progress: Progress | None = None) -> list[RoundResult]:
    """Run the whole story against a real service process; one result per round.

    ``on_progress(task, done, total)`` reports encryption (ciphertexts) and
    refinement (rounds the service finished).
    """
    say = on_event or (lambda _msg: None)
    report = on_progress or (lambda _task, _done, _total: None)
    data = split(config)
    params = preset(config.params)
    d = data.first[0].shape[1]
    kind = _Kind(config, d)
    k = config.n_classes
    cfg = RefineConfig(learning_rate=config.learning_rate, momentum=config.momentum,
                       batch_size=config.batch_size, epochs=config.epochs_per_round)
    admin = secrets.token_urlsafe(24)
    with ServiceProcess(workdir, admin_token=admin, log_path=workdir / "service.log",
                        poll_interval_s=0.3) as service:
        url = service.url
        say(f"service up at {url} (SQLite, blob store and enclave state in {workdir})")
        with ServiceClient(url, admin) as operator:
            owner_token = operator.create_tenant("demo-clinic")["owner_token"]

        # -- the owner, at home -------------------------------------------------------
        key = SecretContext.generate(params, rotations_for_features(d, params.slots))
        owner = ServiceClient(url, owner_token)
        ctx = owner.register_context(key.public_context().serialize())
        holdout = encrypt_batches(key, *data.holdout, n_classes=k)  # pinned: releases only these
        verified = provision(owner, key, simulated_policy(workdir / "enclave"),
                             policy={"holdouts": [holdout_pin(*holdout)]})
        if on_attested is not None:
            on_attested(verified)
        policy = {"trigger_min_samples": min(len(c[1]) for c in data.rounds),
                  "epochs": cfg.epochs, "learning_rate": cfg.learning_rate,
                  "momentum": cfg.momentum, "batch_size": cfg.batch_size,
                  "release_metric": True}
        model_id = owner.create_model(config.data.replace("_", "-"), ctx["id"], d, policy)["id"]
        first = kind.refine(kind.start(), data.first, cfg)
        owner.upload_version(model_id, kind.encrypt(key, first))
        owner.upload_samples(model_id, encode_samples(*holdout), holdout=True)
        device_token = owner.create_token("contributor", "bedside device")["token"]
        say(f"owner set up model {model_id} and went offline (policy: refine every "
            f"{policy['trigger_min_samples']} new samples, {cfg.epochs} epochs)")

        # -- a device uploads encrypted samples; the service refines on its own --------
        device = ServiceClient(url, device_token)
        public = PublicContext.load(device.context_blob(ctx["id"]))
        seen = len(data.first[1])
        timings: list[tuple[int, float]] = []
        n_cts = sum(dataset_size(len(y), d, params.slots) for _, y in data.rounds)
        encrypted = 0
        report("refining", 0, len(data.rounds))
        for r, (X, y) in enumerate(data.rounds, start=1):
            def tick(k: int) -> None:
                nonlocal encrypted
                encrypted += k
                report("encrypting", encrypted, n_cts)

            device.upload_samples(model_id, upload_body(public, X, y, progress=tick, n_classes=k))
            seen += len(y)
            t0 = time.perf_counter()
            rnd = _wait_for_round(owner, model_id, r - 1, config.round_timeout_s)
            timings.append((seen, time.perf_counter() - t0))
            report("refining", r, len(data.rounds))
            say(f"round {r}: {len(y)} new encrypted samples -> service refined, "
                f"enclave said {rnd['decision']}")
        device.close()

        # -- the owner comes back: pull every version, decrypt, compare ---------------
        versions = sorted(owner.versions(model_id), key=lambda v: v["number"])
        plain = kind.without_momentum(first)
        results = [RoundResult(0, len(data.first[1]), "uploaded", None,
                               kind.accuracy(first, data.test), kind.accuracy(first, data.test),
                               0.0, 0.0)]
        if on_round is not None:
            on_round(results[0])
        current = first
        round_versions = [v for v in versions if v["round_id"]]
        for r, (v, (X, y), (n_seen, secs)) in enumerate(
                zip(round_versions, data.rounds, timings, strict=True), start=1):
            candidate = kind.refine(plain, (X, y), cfg)
            decrypted = kind.decrypt(key, owner.version_blob(model_id, v["id"]))
            if v["decision"] == "promote":
                plain, current = candidate, decrypted
            metric = (v["metrics"] or {}).get("candidate")
            res = RoundResult(r, n_seen, v["decision"], metric, kind.accuracy(current, data.test),
                              kind.accuracy(plain, data.test), kind.gap(decrypted, candidate),
                              secs)
            results.append(res)
            if on_round is not None:
                on_round(res)
        owner.close()
    return results


def plot(results: list[RoundResult], path: Path, title: str = "breast cancer") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    rounds = [r.round for r in results]
    enc = [r.encrypted_accuracy for r in results]
    plain = [r.plaintext_accuracy for r in results]
    # The two lines coincide when CKKS noise is small: the plaintext one is drawn first,
    # thick and pale, the encrypted one on top, thin with hollow markers, so both show.
    ax.plot(rounds, plain, "-", color="tab:orange", linewidth=5, alpha=0.45,
            label="plaintext, same algorithm", zorder=2)
    ax.plot(rounds, enc, "--", color="tab:blue", linewidth=1.5,
            label="encrypted, refined by the service", zorder=3)
    marks = {"promote": ("^", "tab:green", "promoted"), "keep": ("x", "tab:red", "kept")}
    for decision, (marker, color, text) in marks.items():
        pts = [(r.round, r.encrypted_accuracy) for r in results if r.decision == decision]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, marker=marker, s=70, color=color, zorder=4,
                       facecolors="none" if marker == "^" else color,
                       label=f"round's candidate {text}")
    others = [(r.round, r.encrypted_accuracy) for r in results if r.decision not in marks]
    if others:
        xs, ys = zip(*others, strict=True)
        ax.scatter(xs, ys, marker="o", s=40, color="tab:blue", zorder=4,
                   facecolors="none", label="owner's initial model")
    ax.set_xticks(rounds)
    ax.set_xlabel("refinement round (0 = owner's initial model)")
    ax.set_ylabel("test accuracy of the current model")
    ax.set_title(f"cipherloop: autonomous encrypted refinement ({title})")
    ax.set_ylim(max(0.0, min(enc + plain) - 0.05), 1.005)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

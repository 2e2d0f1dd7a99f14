"""The ``cipherloop`` command.

Runs in: owner (demo, keys, data) and host (enclave, serve).

Exit codes: 0 success, 1 a cipherloop error (bad input, refused by the
enclave or the service), 2 usage error, 3 the enclave or service could not
be reached, 4 the enclave's evidence did not verify (no key was released).

Settings that most commands share can come from the environment:
``CIPHERLOOP_SERVER`` (service URL), ``CIPHERLOOP_TOKEN`` (bearer token),
``CIPHERLOOP_KEY`` (the owner's key file) and ``CIPHERLOOP_MODEL`` (model id).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import AttestationError, CipherloopError, EnclaveUnavailable

app = typer.Typer(
    help="cipherloop: refine encrypted models in the cloud. The host computes on CKKS "
    "ciphertexts; a small enclave holds the key and does only what CKKS cannot.",
    no_args_is_help=True,
    add_completion=False,
)
enclave_app = typer.Typer(help="Run or inspect the enclave process.", no_args_is_help=True)
app.add_typer(enclave_app, name="enclave")

console = Console()
err_console = Console(stderr=True)

EXIT_ERROR = 1
EXIT_UNAVAILABLE = 3
EXIT_ATTESTATION = 4

Server = Annotated[str, typer.Option(envvar="CIPHERLOOP_SERVER", help="Service URL.")]
Token = Annotated[str, typer.Option(envvar="CIPHERLOOP_TOKEN", help="Bearer token.",
                                    show_default=False)]
KeyFile = Annotated[Path, typer.Option("--key", envvar="CIPHERLOOP_KEY",
                                       help="The owner's secret key file (from keygen).")]
ModelId = Annotated[str, typer.Option("--model", envvar="CIPHERLOOP_MODEL", help="Model id.")]
AllowSim = Annotated[bool, typer.Option(
    "--allow-simulated", help="Accept the SIMULATED TEE (development only; warns every time).")]
SimRoot = Annotated[Path | None, typer.Option(
    help="PEM of the simulated TEE's root to pin (the service prints its path at start).")]
Measurements = Annotated[list[str] | None, typer.Option(
    "--measurement", help="Allowed enclave measurement (hex); repeat. Default: this install's.")]
DEFAULT_SERVER = "http://127.0.0.1:8000"
DEFAULT_KEY = Path("cipherloop-owner.key")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=console)


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Rounds of new encrypted data.")] = 6,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Epochs the service runs per round (default 8; 3 on digits).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the plot and the service's data.")] = Path(
        "cipherloop-demo"),
    params: Annotated[str, typer.Option(help="CKKS preset: n8192 or n16384.")] = "n8192",
    data: Annotated[str, typer.Option(
        help="breast_cancer (binary) or digits (10 classes, multinomial logistic regression; "
             "rounds of 3 epochs unless --epochs says otherwise).")] = "breast_cancer",
) -> None:
    """An autonomous refining service at work, on breast-cancer data (or digits), next to plaintext.

    Starts a real service process (HTTP API, round worker, SQLite, blob store)
    with its enclave (simulated TEE platform). The owner attests the enclave and
    releases its key, uploads an encrypted initial model, hold-out set and policy,
    and goes offline; a device uploads encrypted samples in rounds and the service
    refines on its own. Then the owner pulls every version and decrypts it.
    Prints a table per round and saves a PNG plot of accuracy per round.
    """
    import shutil

    from . import demo as demo_mod

    if data not in ("breast_cancer", "digits"):
        raise typer.BadParameter("--data is breast_cancer or digits")
    digits = data == "digits"
    epochs = epochs if epochs is not None else (3 if digits else 8)
    config = demo_mod.DemoConfig(rounds=rounds, epochs_per_round=epochs, params=params, data=data,
                                 first_slice=100 if digits else 30,
                                 holdout=120 if digits else 60)
    title = "digits (10 classes)" if digits else "breast cancer"
    table = Table(title=f"autonomous encrypted refinement: {title}, test accuracy",
                  caption="gap = max |w_encrypted - w_plaintext| of the round's candidate; "
                          "hold-out = log-loss the enclave released")
    for col in ("round", "seen", "decision", "hold-out", "enc acc", "plain acc", "gap", "sec"):
        table.add_column(col, justify="right", no_wrap=True)
    console.print("[bold yellow]Simulated TEE:[/] the enclave runs as a separate local process "
                  "(platform 'sim'); it is not hardware-isolated. Simulation is explicitly allowed "
                  "for this demo.")
    workdir = out / "service-data"
    shutil.rmtree(workdir, ignore_errors=True)

    def on_attested(verified: Any) -> None:
        console.print("[bold]owner verified the enclave[/] before releasing its key:")
        _print_evidence(verified)

    def on_round(r: demo_mod.RoundResult) -> None:
        table.add_row(str(r.round), str(r.samples_seen), r.decision,
                      "-" if r.holdout_metric is None else f"{r.holdout_metric:.3f}",
                      f"{r.encrypted_accuracy:.3f}", f"{r.plaintext_accuracy:.3f}",
                      f"{r.max_weight_gap:.1e}", f"{r.seconds:.1f}")

    with _progress() as progress:
        tasks: dict[str, Any] = {}

        def on_progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                label = {"encrypting": "device encrypting samples",
                         "refining": "service refining rounds"}.get(task, task)
                tasks[task] = progress.add_task(label, total=total)
            progress.update(tasks[task], completed=done, total=total)

        results = demo_mod.run(config, workdir, on_attested=on_attested,
                               on_event=progress.console.print, on_round=on_round,
                               on_progress=on_progress)
    console.print(table)
    path = demo_mod.plot(results, out / "accuracy_per_round.png", title)
    console.print(f"plot saved to [bold]{path}[/]; service log in {workdir / 'service.log'}")


@enclave_app.command("serve")
def enclave_serve(
    socket: Annotated[Path, typer.Option(help="Unix socket path to listen on.")],
    platform: Annotated[str, typer.Option(help="sim, sgx or nitro.")] = "sim",
    no_local_provisioning: Annotated[bool, typer.Option(
        help="Accept attested key provisioning only.")] = False,
) -> None:
    """Run the enclave process in the foreground (same as ``python -m cipherloop.enclave``)."""
    from .enclave.__main__ import main as enclave_main

    args = ["--socket", str(socket), "--platform", platform]
    if no_local_provisioning:
        args.append("--no-local-provisioning")
    raise typer.Exit(enclave_main(args))


# ------------------------------------------------------------------------ owner's keys
def _read_key(path: Path) -> Any:
    from .ckks import SecretContext

    try:
        return SecretContext.load_secret(path.read_bytes())
    except OSError:
        raise typer.BadParameter(f"cannot read key file {path}", param_hint="--key") from None


def _verifier(allow_simulated: bool, sim_root: Path | None, measurements: list[str] | None) -> Any:
    from .attest import VerifierPolicy
    from .client.provisioning import local_measurement

    allowed = set(measurements) if measurements else {local_measurement()}
    roots: tuple[bytes, ...] = ()
    if sim_root is not None:
        if not allow_simulated:
            raise typer.BadParameter("--sim-root only makes sense with --allow-simulated")
        roots = (sim_root.read_bytes(),)
    return VerifierPolicy(measurements=allowed, allow_simulated=allow_simulated, pinned_roots=roots)


def _print_evidence(verified: Any) -> None:
    from .attest import describe

    table = Table(title="verified enclave evidence", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    for label, value in describe(verified):
        style = "bold red" if label == "simulated" and verified.simulated else ""
        table.add_row(label, f"[{style}]{value}[/]" if style else value)
    console.print(table)


def _link(socket: Path | None, server: str, token: str | None) -> Any:
    """The enclave directly (its socket) or through the service's relay."""
    from .client.service import ServiceClient
    from .learn import EnclaveClient

    if socket is not None:
        return EnclaveClient(socket)
    if not token:
        raise typer.BadParameter("give --socket, or --server with an owner --token")
    return ServiceClient(server, token)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option(envvar="CIPHERLOOP_KEY",
                                      help="Where to write the secret key file.")] = DEFAULT_KEY,
    features: Annotated[int, typer.Option(min=1, help="Most features a model will have.")] = 64,
    params: Annotated[str, typer.Option(help="CKKS preset: n8192 or n16384.")] = "n8192",
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
) -> None:
    """Make the owner's CKKS key pair and write it (owner-only permissions).

    The file holds the SECRET key: keep it at home. The cloud only ever gets the
    public context (``init`` registers it) and, inside an attested enclave, the
    HPKE-wrapped secret key (``provision``).
    """
    from .ckks import SecretContext, preset, rotations_for_features

    if out.exists() and not force:
        raise typer.BadParameter(f"{out} exists; pass --force to replace it", param_hint="--out")
    with console.status("generating CKKS keys"):
        p = preset(params)
        key = SecretContext.generate(p, rotations_for_features(features, p.slots))
        blob = key.export_secret(evaluation_keys=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    console.print(f"wrote {out} (key id {key.key_id}, {len(blob) / 1e6:.1f} MB, mode 0600)")


@app.command()
def attest(
    socket: Annotated[Path | None, typer.Option(help="Enclave socket (local enclave).")] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    allow_simulated: AllowSim = False,
    sim_root: SimRoot = None,
    measurement: Measurements = None,
) -> None:
    """Challenge an enclave and print its verified evidence in plain words.

    Verifies the chain to a pinned root, debug off, the measurement on the
    allowlist, TCB status and freshness. Simulated evidence is refused unless
    --allow-simulated is given, and then it is flagged loudly.
    """
    from .attest import new_challenge, verify_offer

    verifier = _verifier(allow_simulated, sim_root, measurement)
    link = _link(socket, server, token)
    challenge = new_challenge()
    verified = verify_offer(link.attest(challenge.nonce, challenge.session_id), challenge, verifier)
    _print_evidence(verified)


@app.command("provision")
def provision_cmd(
    key: KeyFile = DEFAULT_KEY,
    socket: Annotated[Path | None, typer.Option(help="Enclave socket (local enclave).")] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    allow_simulated: AllowSim = False,
    sim_root: SimRoot = None,
    measurement: Measurements = None,
    release: Annotated[str, typer.Option(
        help="Metrics the enclave may release: comma list of accuracy, log_loss; empty for none.")
    ] = "accuracy,log_loss",
) -> None:
    """Verify the enclave, then release the secret key to it (HPKE to its attested key).

    The enclave seals the key to its storage, bound to its measurement, and
    serves later without you -- until its code changes.
    """
    from .client.provisioning import provision

    secret = _read_key(key)
    verifier = _verifier(allow_simulated, sim_root, measurement)
    policy = _enclave_policy(key)
    policy["release"] = [m for m in release.split(",") if m]
    verified = provision(_link(socket, server, token), secret, verifier, policy=policy)
    _save_enclave_policy(key, policy)
    _print_evidence(verified)
    console.print(f"key {secret.key_id} provisioned")


# --------------------------------------------------------------------- the service
@app.command()
def serve(
    data_dir: Annotated[Path, typer.Option(envvar="CIPHERLOOP_DATA_DIR",
                                           help="Database, blobs, enclave state.")] = Path("cipherloop-data"),
    database_url: Annotated[str | None, typer.Option(
        envvar="CIPHERLOOP_DATABASE_URL", help="SQLAlchemy URL (PostgreSQL: postgresql+psycopg://...).")
    ] = None,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8000,
) -> None:
    """Run the refining service: HTTP API, round worker and the enclave (sim platform).

    Needs CIPHERLOOP_ADMIN_TOKEN (16+ characters) in the environment for tenant
    creation. Embedded defaults: SQLite and a file blob store in --data-dir.
    """
    from .cloud.server import serve as run_service
    from .cloud.settings import Settings

    try:
        settings = Settings.from_env(data_dir=data_dir, database_url=database_url, host=host,
                                     port=port)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    run_service(settings)


def _policy(trigger_samples: int | None, interval: float | None, epochs: int, lr: float,
            momentum: float, batch_size: int | None, release_metric: bool) -> dict[str, Any]:
    return {"trigger_min_samples": trigger_samples, "trigger_interval_s": interval,
            "epochs": epochs, "learning_rate": lr, "momentum": momentum, "batch_size": batch_size,
            "release_metric": release_metric}


@app.command()
def init(
    features: Annotated[int, typer.Option(min=1, help="Number of features of the model.")],
    name: Annotated[str, typer.Option(help="Model name.")] = "model",
    key: KeyFile = DEFAULT_KEY,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    trigger_samples: Annotated[int | None, typer.Option(
        help="Refine after this many new samples.")] = 256,
    interval: Annotated[float | None, typer.Option(help="...or every this many seconds.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per round.")] = 5,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1.0,
    momentum: Annotated[float, typer.Option(help="Nesterov momentum.")] = 0.9,
    batch_size: Annotated[int | None, typer.Option(help="Mini-batch size (default: full batch).")] = None,
    release_metric: Annotated[bool, typer.Option(help="Let the hold-out metric leave the enclave.")] = True,
    initial: Annotated[Path | None, typer.Option(
        help="Initial weights: .npy (coef, intercept last) or .npz (coef, intercept).")] = None,
    holdout: Annotated[Path | None, typer.Option(help="Hold-out set (CSV/NPZ) to judge rounds.")] = None,
    allow_simulated: AllowSim = False,
    sim_root: SimRoot = None,
    measurement: Measurements = None,
    model_kind: Annotated[str, typer.Option(
        "--model", help="Model kind: logreg (binary or multinomial) or mlp.")] = "logreg",
    classes: Annotated[int, typer.Option(min=2, max=256, help="Number of classes.")] = 2,
    hidden: Annotated[int, typer.Option(min=1, max=1024, help="Hidden units (mlp).")] = 32,
    activation: Annotated[str, typer.Option(help="relu, tanh or logistic (mlp).")] = "relu",
) -> None:
    """Set up a model in the service, then go offline.

    Registers the public context, verifies the enclave and releases the key to it,
    creates the model with its refinement policy, uploads the encrypted initial
    model (and hold-out set). From then on the service refines on its own.
    """
    from .client.data import encrypt_batches, encrypt_model
    from .client.provisioning import holdout_pin, provision
    from .client.service import ServiceClient, ServiceError
    from .enclave.policy import MAX_PINNED
    from .learn.wire import encode_samples

    secret = _read_key(key)
    verifier = _verifier(allow_simulated, sim_root, measurement)
    if model_kind not in ("logreg", "mlp") or activation not in ("relu", "tanh", "logistic"):
        raise typer.BadParameter("--model is logreg or mlp; --activation relu, tanh or logistic")
    network = model_kind == "mlp" or classes > 2
    coef, intercept = _initial_weights(None if network else initial, features)
    enclave_policy = _enclave_policy(key)
    hold = None
    if holdout is not None:
        # Encrypt once and pin exactly these batches: the enclave releases metrics only
        # about a hold-out set its owner pinned, never one the host chose.
        hold = encrypt_batches(secret, *_load_xy(holdout, None), n_classes=classes)
        pins = [p for p in enclave_policy.get("holdouts", []) if p != holdout_pin(*hold)]
        enclave_policy["holdouts"] = [*pins[-(MAX_PINNED - 1):], holdout_pin(*hold)]
    with ServiceClient(server, token) as svc:
        with console.status("registering the public context"):
            public = secret.public_context().serialize()
            try:
                ctx = svc.register_context(public)
            except ServiceError as exc:
                if exc.status != 409:
                    raise
                ctx = next(c for c in svc.contexts() if c["key_id"] == secret.key_id)
        verified = provision(svc, secret, verifier, policy=enclave_policy)
        _save_enclave_policy(key, enclave_policy)
        _print_evidence(verified)
        policy = _policy(trigger_samples, interval, epochs, lr, momentum, batch_size, release_metric)
        model = svc.create_model(name, ctx["id"], features, policy)
        if network:
            from .client.network import encrypt_network, initial_network

            start = initial_network("softmax" if model_kind == "logreg" else "mlp", features,
                                    classes, hidden=hidden, activation=activation)
            blob = encrypt_network(secret, start).to_bytes(secret)
        else:
            blob = encrypt_model(secret, coef, intercept).to_bytes(secret)
        svc.upload_version(model["id"], blob)
        if hold is not None:
            svc.upload_samples(model["id"], encode_samples(*hold), holdout=True)
    console.print(f"model [bold]{model['id']}[/] ready; the service refines it on its own.")
    console.print(f"  export CIPHERLOOP_MODEL={model['id']}")


def _enclave_policy_path(key: Path) -> Path:
    return key.with_name(key.name + ".policy.json")


def _enclave_policy(key: Path) -> dict[str, Any]:
    """The enclave policy last provisioned with this key (its pinned hold-out sets), kept at home."""
    import json

    try:
        doc = json.loads(_enclave_policy_path(key).read_text())
    except (OSError, ValueError):
        return {}
    doc = dict(doc) if isinstance(doc, dict) else {}
    doc.pop("version", None)  # every provisioning gets a newer one
    return doc


def _save_enclave_policy(key: Path, policy: dict[str, Any]) -> None:
    import json

    _enclave_policy_path(key).write_text(json.dumps(policy, indent=1) + "\n")


def _initial_weights(path: Path | None, features: int) -> tuple[Any, float]:
    import numpy as np

    if path is None:
        return np.zeros(features), 0.0
    if path.suffix == ".npz":
        doc = np.load(path)
        coef, b = np.asarray(doc["coef"], dtype=float).ravel(), float(doc.get("intercept", 0.0))
    else:
        arr = np.asarray(np.load(path), dtype=float).ravel()
        coef, b = arr[:-1], float(arr[-1])
    if coef.shape[0] != features:
        raise typer.BadParameter(f"{path} holds {coef.shape[0]} weights, not {features}")
    return coef, b


def _load_xy(path: Path, label_column: int | None) -> tuple[Any, Any]:
    """X and y from .npz (arrays X, y) or CSV (label in the last column by default)."""
    import numpy as np

    try:
        if path.suffix == ".npz":
            doc = np.load(path)
            return np.asarray(doc["X"], dtype=float), np.asarray(doc["y"], dtype=float)
        data = np.genfromtxt(path, delimiter=",", dtype=float)
    except (OSError, KeyError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    if data.ndim == 1:
        data = data.reshape(1, -1)
    if np.isnan(data[0]).all():
        data = data[1:]  # a header row
    col = data.shape[1] - 1 if label_column is None else label_column
    return np.delete(data, col, axis=1), data[:, col]


def _load_x(path: Path) -> Any:
    import numpy as np

    try:
        if path.suffix == ".npy":
            return np.asarray(np.load(path), dtype=float)
        if path.suffix == ".npz":
            return np.asarray(np.load(path)["X"], dtype=float)
        data = np.genfromtxt(path, delimiter=",", dtype=float)
    except (OSError, KeyError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from None
    data = data.reshape(1, -1) if data.ndim == 1 else data
    return data[1:] if np.isnan(data[0]).all() else data


@app.command()
def upload(
    data: Annotated[Path, typer.Argument(help="CSV (label last) or .npz with arrays X and y.")],
    model: ModelId,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    key: Annotated[Path | None, typer.Option(
        "--key", envvar="CIPHERLOOP_KEY", help="Owner key; without it the public context is fetched.")
    ] = None,
    label_column: Annotated[int | None, typer.Option(help="Label column in a CSV (default last).")] = None,
    holdout: Annotated[bool, typer.Option(help="Upload as the hold-out set (owner only).")] = False,
) -> None:
    """Encrypt new samples and upload them; a contributor token is enough.

    Contributors hold no key: the public context is fetched from the service and
    the samples are encrypted with the public key before they leave.
    """
    import numpy as np

    from .ckks import PublicContext
    from .client.data import dataset_size, upload_body
    from .client.service import ServiceClient

    X, y = _load_xy(data, label_column)
    with ServiceClient(server, token) as svc:
        if key is not None:
            ctx: Any = _read_key(key)
        else:
            rows = svc.contexts()
            if len(rows) != 1:
                raise typer.BadParameter("the tenant has several contexts; pass the owner's --key")
            with console.status("fetching the public context"):
                ctx = PublicContext.load(svc.context_blob(rows[0]["id"]))
        with _progress() as progress:
            task = progress.add_task("encrypting", total=dataset_size(len(y), X.shape[1],
                                                                        ctx.params.slots))
            body = upload_body(ctx, X, y, progress=lambda k: progress.advance(task, k),
                               n_classes=max(2, int(np.max(y)) + 1))
        with console.status(f"uploading {len(body) / 1e6:.1f} MB"):
            row = svc.upload_samples(model, body, holdout=holdout)
    console.print(f"upload {row['id']}: {row['n_samples']} samples ({row['kind']})")


@app.command()
def status(model: ModelId, server: Server = DEFAULT_SERVER, token: Token = "") -> None:
    """Rounds, versions and their coarse metrics."""
    from .client.service import ServiceClient

    with ServiceClient(server, token) as svc:
        m = svc.model(model)
        versions = svc.versions(model)
        rounds = svc.rounds(model)
        uploads = svc.uploads(model)
    console.print(f"model {m['name']} ({m['id']}), {m['n_features']} features, "
                  f"current version {m['current_version_id']}")
    pending = sum(u["n_samples"] for u in uploads if u["kind"] == "data" and not u["round_id"])
    console.print(f"uploads: {len(uploads)}, samples waiting for a round: {pending}")
    t = Table(title="versions")
    for col in ("#", "id", "parent", "round", "decision", "metrics", "created"):
        t.add_column(col)
    for v in versions:
        t.add_row(str(v["number"]), v["id"], str(v["parent_id"] or "-"), str(v["round_id"] or "-"),
                  v["decision"], str(v["metrics"] or "-"), str(v["created_at"])[:19])
    console.print(t)
    r = Table(title="rounds")
    for col in ("#", "state", "trigger", "attempts", "decision", "reason", "metrics"):
        r.add_column(col)
    for rd in rounds:
        r.add_row(str(rd["number"]), rd["state"], rd["trigger"], str(rd["attempts"]),
                  str(rd["decision"] or "-"), rd["reason"] or (rd["error"] or ""), str(rd["metrics"] or "-"))
    console.print(r)


@app.command()
def pull(
    model: ModelId,
    version: Annotated[str | None, typer.Option(help="Version id (default: current).")] = None,
    key: KeyFile = DEFAULT_KEY,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    out: Annotated[Path | None, typer.Option(help="Write coef and intercept to this .npz.")] = None,
) -> None:
    """Download a model version and decrypt it at home."""
    import numpy as np

    from .client.data import decrypt_model
    from .client.service import ServiceClient
    from .learn.model import EncryptedModel
    from .learn.network import EncryptedNetwork, is_network

    secret = _read_key(key)
    with ServiceClient(server, token) as svc:
        vid = version or svc.model(model)["current_version_id"]
        if vid is None:
            raise typer.BadParameter("the model has no version yet")
        blob = svc.version_blob(model, vid)
    if is_network(blob):
        from .client.network import decrypt_network

        net = decrypt_network(secret, EncryptedNetwork.from_bytes(secret, blob))
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in net.weights.items())
        console.print(f"version {vid}: {net.kind} model, {shapes}")
        if out is not None:
            arrays: dict[str, Any] = {"kind": net.kind, "activation": net.activation, **net.weights}
            np.savez(out, **arrays)
            console.print(f"saved to {out}")
        return
    coef, b = decrypt_model(secret, EncryptedModel.from_bytes(secret, blob))
    console.print(f"version {vid}: intercept {b:+.4f}, coef {np.array2string(coef, precision=4)}")
    if out is not None:
        np.savez(out, coef=coef, intercept=b)
        console.print(f"saved to {out}")


@app.command()
def predict(
    data: Annotated[Path, typer.Argument(help="Features: CSV, .npy or .npz (array X).")],
    model: ModelId,
    key: KeyFile = DEFAULT_KEY,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    version: Annotated[str | None, typer.Option(help="Version id (default: current).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write probabilities to this CSV.")] = None,
) -> None:
    """Encrypted inference: encrypt features, the service scores them, decrypt at home."""
    import numpy as np

    from .client.data import decrypt_scores, encrypt_features
    from .client.service import ServiceClient

    secret = _read_key(key)
    X = _load_x(data)
    with ServiceClient(server, token) as svc, console.status("scoring on ciphertexts"):
        raw = svc.predict(model, encrypt_features(secret, X).to_bytes(), version_id=version)
    z = decrypt_scores(secret, raw)
    if z.ndim == 2:  # K classes: softmax probabilities, one column per class
        from .client.estimator import softmax

        p = softmax(z)
    else:
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
    if out is not None:
        np.savetxt(out, p, delimiter=",", fmt="%.6f")
        console.print(f"{len(p)} probabilities written to {out}")
    else:
        for i, v in enumerate(p[:20]):
            console.print(f"{i}\t{v:.4f}" if p.ndim == 1 else
                          f"{i}\tclass {int(v.argmax())}\t{v.max():.4f}")
        if len(p) > 20:
            console.print(f"... {len(p) - 20} more (use --out)")


@enclave_app.command("measure")
def enclave_measure() -> None:
    """Print the measurement this installation's enclave code has, for owners' allowlists."""
    from .client.provisioning import local_measurement

    typer.echo(local_measurement())  # plain, unwrapped: scripts capture it


def main() -> None:
    """Entry point: map cipherloop errors to exit codes with a one-line message."""
    from .client.service import ServiceUnavailable

    try:
        app(standalone_mode=True)
    except (EnclaveUnavailable, ServiceUnavailable) as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    except AttestationError as exc:
        err_console.print(f"[red]attestation failed, no key released:[/] {exc}")
        sys.exit(EXIT_ATTESTATION)
    except CipherloopError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()

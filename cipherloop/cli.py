"""The ``cipherloop`` command.

Runs in: owner (demo, keys, data) and host (enclave, serve).

Exit codes: 0 success, 1 a cipherloop error (bad input, refused by the
enclave or the service), 2 usage error, 3 the enclave or service could not
be reached, 4 the enclave's evidence did not verify (no key was released),
5 ``serve``: another service already runs on this data directory.

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

from .enclave.limits import MAX_CLASSES, MAX_HIDDEN
from .errors import AttestationError, CipherloopError, EnclaveUnavailable

app = typer.Typer(
    help="cipherloop: refine encrypted models in the cloud. The host computes on CKKS "
    "ciphertexts; a small enclave holds the key and does only what CKKS cannot.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help wraps at any width; rich's tables cut flag names
)
enclave_app = typer.Typer(help="Run or inspect the enclave process.", no_args_is_help=True,
                          rich_markup_mode=None)
app.add_typer(enclave_app, name="enclave")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"cipherloop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False) -> None:
    """cipherloop: refine encrypted models in the cloud. The host computes on CKKS
    ciphertexts; a small enclave holds the key and does only what CKKS cannot.
    """

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


def _progress(unit: str = "") -> Progress:
    suffix = f" {unit}" if unit else ""
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}" + suffix), TimeElapsedColumn(),
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
    state_dir: Annotated[Path, typer.Option(
        help="Platform state and sealed keys (kept across restarts).")] = Path("cipherloop-enclave"),
    platform: Annotated[str, typer.Option(help="sim, sgx or nitro.")] = "sim",
    allow_local_provisioning: Annotated[bool, typer.Option(
        "--allow-local-provisioning",
        help="Also accept the unattested development key hand-over (tests only).")] = False,
) -> None:
    """Run the enclave process in the foreground (same as python -m cipherloop.enclave).

    Keys arrive by attested provisioning only, unless --allow-local-provisioning.
    """
    from .enclave.__main__ import main as enclave_main

    args = ["--socket", str(socket), "--state-dir", str(state_dir), "--platform", platform]
    if allow_local_provisioning:
        args.append("--allow-local-provisioning")
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
    engine: Annotated[str, typer.Option(
        envvar="CIPHERLOOP_ENGINE", help="Where rounds compute: local, or ray (cipherloop[ray]).")
    ] = "local",
    ray_address: Annotated[str | None, typer.Option(
        envvar="CIPHERLOOP_RAY_ADDRESS", help="Ray head host:port (default: start a local Ray).")
    ] = None,
) -> None:
    """Run the refining service: HTTP API, round worker and the enclave (sim platform).

    Needs CIPHERLOOP_ADMIN_TOKEN (16+ characters) in the environment for tenant
    creation. Embedded defaults: SQLite and a file blob store in --data-dir.
    Runs in the foreground until SIGTERM or Ctrl-C; restarts its enclave and
    worker if they die. One service per --data-dir (exit code 5 otherwise).
    """
    from .cloud.server import serve as run_service
    from .cloud.settings import Settings
    from .cloud.supervise import EXIT_DATA_DIR_IN_USE, DataDirInUse

    try:
        settings = Settings.from_env(data_dir=data_dir, database_url=database_url, host=host,
                                     port=port, engine=engine, ray_address=ray_address)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        run_service(settings)
    except DataDirInUse as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_DATA_DIR_IN_USE) from None


def _policy(trigger_samples: int | None, interval: float | None, epochs: int, lr: float,
            momentum: float, batch_size: int | None, release_metric: bool) -> dict[str, Any]:
    return {"trigger_min_samples": trigger_samples, "trigger_interval_s": interval,
            "epochs": epochs, "learning_rate": lr, "momentum": momentum, "batch_size": batch_size,
            "release_metric": release_metric}


DEFAULT_TRIGGER = 256


@app.command()
def init(
    features: Annotated[int, typer.Option(min=1, help="Number of features of the model.")],
    data: Annotated[Path | None, typer.Option(
        help="Your own labelled samples (CSV, label last): the standardisation and the "
             "initial model are fitted on them, at home.")] = None,
    holdout: Annotated[Path | None, typer.Option(
        help="Hold-out set (CSV, label last) the enclave judges rounds on.")] = None,
    name: Annotated[str, typer.Option(help="Model name.")] = "model",
    key: KeyFile = DEFAULT_KEY,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    trigger_samples: Annotated[int | None, typer.Option(
        min=1, help="Refine after this many new samples.")] = DEFAULT_TRIGGER,
    interval: Annotated[float | None, typer.Option(
        min=1.0, help="...or every this many seconds (with new data).")] = None,
    epochs: Annotated[int, typer.Option(min=1, max=1000, help="Epochs per round.")] = 5,
    lr: Annotated[float, typer.Option(min=1e-6, max=999.0, help="Learning rate.")] = 1.0,
    momentum: Annotated[float, typer.Option(min=0.0, max=0.999, help="Nesterov momentum.")] = 0.9,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Mini-batch size (default: full batch).")] = None,
    release_metric: Annotated[bool, typer.Option(
        help="Let the hold-out metric leave the enclave.")] = True,
    initial: Annotated[Path | None, typer.Option(
        help="Initial weights on standardised features: .npy (coef, intercept last) or "
             ".npz (coef, intercept). Default: fitted on --data, else zeros.")] = None,
    standardize: Annotated[bool, typer.Option(
        help="Standardise features with means and deviations of --data (or --holdout).")] = True,
    allow_simulated: AllowSim = False,
    sim_root: SimRoot = None,
    measurement: Measurements = None,
    model_kind: Annotated[str, typer.Option(
        "--model", help="Model kind: logreg (binary or multinomial) or mlp.")] = "logreg",
    classes: Annotated[int, typer.Option(min=2, max=MAX_CLASSES, help="Number of classes.")] = 2,
    hidden: Annotated[int, typer.Option(min=1, max=MAX_HIDDEN, help="Hidden units (mlp).")] = 32,
    activation: Annotated[str, typer.Option(help="relu, tanh or logistic (mlp).")] = "relu",
) -> None:
    """Set up a model in the service, then go offline.

    Checks your files, registers the public context, verifies the enclave and
    releases the key to it, creates the model with its refinement policy and
    preprocessing, uploads the encrypted initial model and hold-out set. If
    any step fails, the half-made model is deleted again. From then on the
    service refines on its own.
    """
    from .client.data import encrypt_batches, encrypt_model
    from .client.provisioning import holdout_pin, provision
    from .client.service import ServiceClient, ServiceError
    from .client.tabular import Standardizer, check_width, load_xy
    from .enclave.policy import MAX_PINNED
    from .learn.wire import encode_samples

    secret = _read_key(key)
    verifier = _verifier(allow_simulated, sim_root, measurement)
    if model_kind not in ("logreg", "mlp") or activation not in ("relu", "tanh", "logistic"):
        raise typer.BadParameter("--model is logreg or mlp; --activation relu, tanh or logistic")
    network = model_kind == "mlp" or classes > 2
    # Everything local is read and checked before the service is touched.
    own = hold = None
    if data is not None:
        own = load_xy(data, n_classes=classes)
        check_width(data, own[0], features)
    if holdout is not None:
        hold = load_xy(holdout, n_classes=classes)
        check_width(holdout, hold[0], features)
    fit_on = own or hold
    pre = Standardizer.fit(fit_on[0]) if standardize and fit_on is not None else None
    if pre is None and standardize:
        err_console.print("[yellow]warning:[/] no --data or --holdout to standardise on: "
                          "raw features go in unscaled (fine only if already ~unit scale)")
    coef, intercept = _initial_weights(initial, features, own, pre)
    enclave_policy = _enclave_policy(key)
    hold_batches = None
    if hold is not None:
        # Encrypt once and pin exactly these batches: the enclave releases metrics only
        # about a hold-out set its owner pinned, never one the host chose.
        hold_batches = encrypt_batches(secret, _apply(pre, hold[0]), hold[1], n_classes=classes)
        pin = holdout_pin(*hold_batches)
        pins = [p for p in enclave_policy.get("holdouts", []) if p != pin]
        enclave_policy["holdouts"] = [*pins[-(MAX_PINNED - 1):], pin]
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
        model = svc.create_model(name, ctx["id"], features, policy,
                                 None if pre is None else pre.to_service())
        try:
            if network:
                from .client.network import encrypt_network, initial_network

                start = initial_network("softmax" if model_kind == "logreg" else "mlp", features,
                                        classes, hidden=hidden, activation=activation)
                blob = encrypt_network(secret, start).to_bytes(secret)
            else:
                blob = encrypt_model(secret, coef, intercept).to_bytes(secret)
            svc.upload_version(model["id"], blob)
            if hold_batches is not None:
                svc.upload_samples(model["id"], encode_samples(*hold_batches), holdout=True)
        except BaseException:
            svc.delete_model(model["id"])  # nothing half-made stays behind
            raise
    console.print(f"model [bold]{model['id']}[/] ready; the service refines it on its own "
                  f"after every {trigger_samples or '-'} new samples.")
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


def _apply(pre: Any, X: Any) -> Any:
    from .client.tabular import apply

    return apply(pre, X)


def _initial_weights(path: Path | None, features: int, own: tuple[Any, Any] | None,
                     pre: Any) -> tuple[Any, float]:
    """--initial as given; else logistic regression fitted at home on --data; else zeros.

    On standardised inputs zeros is a neutral start (probability 1/2 for
    everyone) that the first round moves quickly; a model fitted on the
    owner's own samples starts where the owner already is.
    """
    import numpy as np

    if path is None:
        if own is None or len(np.unique(own[1])) < 2:
            return np.zeros(features), 0.0
        from sklearn.linear_model import LogisticRegression

        fitted = LogisticRegression(max_iter=1000).fit(_apply(pre, own[0]), own[1])
        return np.asarray(fitted.coef_, dtype=float).ravel(), float(fitted.intercept_[0])
    try:
        if path.suffix == ".npz":
            doc = np.load(path)
            coef = np.asarray(doc["coef"], dtype=float).ravel()
            b = float(doc["intercept"]) if "intercept" in doc else 0.0
        else:
            arr = np.asarray(np.load(path), dtype=float).ravel()
            coef, b = arr[:-1], float(arr[-1])
    except (OSError, KeyError, ValueError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--initial") from None
    if coef.shape[0] != features:
        raise typer.BadParameter(f"{path} holds {coef.shape[0]} weights, not {features}",
                                 param_hint="--initial")
    return coef, b


def _preprocessing(svc: Any, model: str) -> Any:
    from .client.tabular import Standardizer

    return Standardizer.from_service(svc.preprocessing(model))


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

    Contributors hold no key: the public context and the model's
    standardisation are fetched from the service, applied, and the samples
    are encrypted with the public key before they leave.
    """
    import numpy as np

    from .ckks import PublicContext
    from .client.data import dataset_size, upload_body
    from .client.service import ServiceClient
    from .client.tabular import check_width, load_xy

    X, y = load_xy(data, label_column, n_classes=MAX_CLASSES)  # the model knows its K
    with ServiceClient(server, token) as svc:
        pre = _preprocessing(svc, model)
        if pre is not None:
            check_width(data, X, len(pre.mean))
        if key is not None:
            ctx: Any = _read_key(key)
        else:
            rows = svc.contexts()
            if len(rows) != 1:
                raise typer.BadParameter("the tenant has several contexts; pass the owner's --key")
            with console.status("fetching the public context"):
                ctx = PublicContext.load(svc.context_blob(rows[0]["id"]))
        with _progress("ciphertexts") as progress:
            task = progress.add_task("encrypting", total=dataset_size(len(y), X.shape[1],
                                                                        ctx.params.slots))
            body = upload_body(ctx, _apply(pre, X), y,
                               progress=lambda k: progress.advance(task, k),
                               n_classes=max(2, int(np.max(y)) + 1))
        with console.status(f"uploading {len(body) / 1e6:.1f} MB"):
            row = svc.upload_samples(model, body, holdout=holdout)
    console.print(f"upload {row['id']}: {row['n_samples']} samples ({row['kind']})")


def _short(text: str | None, n: int = 8) -> str:
    return "-" if not text else text[:n]


def _metric(metrics: dict[str, Any] | None) -> str:
    """``log_loss 0.123 -> 0.101`` (current -> candidate), or ``-``."""
    if not metrics:
        return "-"
    name = metrics.get("metric", "")
    cur, cand = metrics.get("current"), metrics.get("candidate")
    if isinstance(cur, (int, float)) and isinstance(cand, (int, float)):
        return f"{name} {cur:.3f}->{cand:.3f}"
    return str(name) or "-"


@app.command()
def status(model: ModelId, server: Server = DEFAULT_SERVER, token: Token = "") -> None:
    """Rounds, versions, their coarse metrics, and samples until the next round."""
    from .client.service import ServiceClient

    with ServiceClient(server, token) as svc:
        m = svc.model(model)
        versions = svc.versions(model)
        rounds = svc.rounds(model)
        uploads = svc.uploads(model)
    policy = m["policy"]
    pending = sum(u["n_samples"] for u in uploads if u["kind"] == "data" and not u["round_id"])
    console.print(f"model {m['name']!r} ({m['id']})")
    console.print(f"  {m['n_features']} features, preprocessing {m['preprocessing']['kind']}, "
                  f"current version {_short(m['current_version_id'])}")
    trigger = policy.get("trigger_min_samples")
    every = policy.get("trigger_interval_s")
    when = []
    if trigger:
        when.append(f"{max(0, trigger - pending)} more samples (trigger {trigger})")
    if every:
        when.append(f"every {every:g}s with new data")
    console.print(f"  {pending} new samples waiting; next round: "
                  f"{' or '.join(when) if when else 'only when started by hand'}")
    t = Table(title="versions", width=min(80, console.width))
    for col in ("#", "id", "round", "decision", "hold-out"):
        t.add_column(col, no_wrap=True)
    for v in versions:
        t.add_row(str(v["number"]), _short(v["id"]), _short(v["round_id"]), v["decision"],
                  _metric(v["metrics"]))
    console.print(t)
    r = Table(title="rounds", width=min(80, console.width))
    for col in ("#", "state", "trigger", "tries", "decision", "note"):
        r.add_column(col, no_wrap=col != "note", overflow="fold")
    for rd in rounds:
        r.add_row(str(rd["number"]), rd["state"], rd["trigger"], str(rd["attempts"]),
                  str(rd["decision"] or "-"), rd["reason"] or rd["error"] or "")
    console.print(r)


@app.command()
def pull(
    model: ModelId,
    version: Annotated[str | None, typer.Option(help="Version id (default: current).")] = None,
    key: KeyFile = DEFAULT_KEY,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    out: Annotated[Path | None, typer.Option(
        help="Write coef and intercept (on raw features) to this .npz.")] = None,
) -> None:
    """Download a model version and decrypt it at home.

    The weights are printed and saved on raw features: the model's
    standardisation is folded in, so they apply to your CSV columns directly.
    """
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
        pre = _preprocessing(svc, model)
    if is_network(blob):
        from .client.network import decrypt_network

        net = decrypt_network(secret, EncryptedNetwork.from_bytes(secret, blob))
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in net.weights.items())
        console.print(f"version {vid}: {net.kind} model, {shapes}")
        if out is not None:
            arrays: dict[str, Any] = {"kind": net.kind, "activation": net.activation, **net.weights}
            if pre is not None:  # the network's weights apply to standardised inputs
                arrays.update(mean=np.asarray(pre.mean), scale=np.asarray(pre.scale))
            np.savez(out, **arrays)
            console.print(f"saved to {out}")
        return
    coef, b = decrypt_model(secret, EncryptedModel.from_bytes(secret, blob))
    if pre is not None:
        coef, b = pre.fold(coef, b)
    console.print(f"version {vid}: intercept {b:+.4f}, coef {np.array2string(coef, precision=4)}")
    if out is not None:
        np.savez(out, coef=coef, intercept=b)
        console.print(f"saved to {out}")


@app.command()
def predict(
    data: Annotated[Path, typer.Argument(help="Features: CSV (no label column), .npy or .npz (X).")],
    model: ModelId,
    key: KeyFile = DEFAULT_KEY,
    server: Server = DEFAULT_SERVER,
    token: Token = "",
    version: Annotated[str | None, typer.Option(help="Version id (default: current).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write probabilities to this CSV.")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="True 0/1 labels (CSV, one per line) to print the accuracy against.")] = None,
) -> None:
    """Encrypted inference: encrypt features, the service scores them, decrypt at home.

    The model's standardisation is fetched and applied before encrypting.
    """
    import numpy as np

    from .client.data import decrypt_scores, encrypt_features
    from .client.service import ServiceClient
    from .client.tabular import check_width, load_x

    secret = _read_key(key)
    X = load_x(data)
    with ServiceClient(server, token) as svc:
        pre = _preprocessing(svc, model)
        if pre is not None:
            check_width(data, X, len(pre.mean))
        with console.status("scoring on ciphertexts"):
            raw = svc.predict(model, encrypt_features(secret, _apply(pre, X)).to_bytes(),
                              version_id=version)
    z = decrypt_scores(secret, raw)
    if z.ndim == 2:  # K classes: softmax probabilities, one column per class
        from .client.estimator import softmax

        p = softmax(z)
        guess = p.argmax(axis=1)
    else:
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        guess = (p > 0.5).astype(int)
    if labels is not None:
        truth = load_x(labels).ravel()
        if truth.shape[0] != p.shape[0]:
            raise typer.BadParameter(f"{labels} has {truth.shape[0]} labels for {p.shape[0]} "
                                     f"samples", param_hint="--labels")
        console.print(f"accuracy {np.mean(guess == np.rint(truth).astype(int)):.3f} "
                      f"on {len(p)} samples")
    if out is not None:
        np.savetxt(out, p, delimiter=",", fmt="%.6f")
        console.print(f"{len(p)} probabilities written to {out}")
    else:
        for i, v in enumerate(p[:20]):
            console.print(f"{i}\t{v:.4f}" if p.ndim == 1 else
                          f"{i}\tclass {int(v.argmax())}\t{v.max():.4f}")
        if len(p) > 20:
            console.print(f"... {len(p) - 20} more (use --out)")


@app.command()
def token(
    role: Annotated[str, typer.Argument(help="contributor (upload only) or predict (inference only).")],
    label: Annotated[str, typer.Option(help="A note to tell tokens apart.")] = "",
    server: Server = DEFAULT_SERVER,
    owner_token: Token = "",
) -> None:
    """Issue a contributor or predict token (needs the owner token); prints it once.

    Hand a contributor token to whoever uploads data: it can upload samples
    for your models and read the public context, nothing else.
    """
    from .client.service import ServiceClient

    if role not in ("contributor", "predict"):
        raise typer.BadParameter("role must be contributor or predict", param_hint="ROLE")
    with ServiceClient(server, owner_token) as svc:
        row = svc.create_token(role, label)
    typer.echo(row["token"])  # plain: scripts capture it


@app.command("sample-data")
def sample_data(
    out: Annotated[Path, typer.Option(help="Folder for the CSV files.")] = Path("cipherloop-example"),
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
) -> None:
    """Write scikit-learn's breast-cancer data as raw CSVs for the README walkthrough.

    owner.csv (80 labelled samples the owner keeps), holdout.csv (80, judged
    on by the enclave), new-samples.csv (260, a contributor's), patients.csv
    (149, features only) and patients-labels.csv (their true labels). Raw,
    unscaled features with a header line; the label is the last column.
    """
    from . import demo as demo_mod

    paths = demo_mod.write_sample_csvs(out, seed=seed)
    for path in paths:
        console.print(f"wrote {path}")


@enclave_app.command("measure")
def enclave_measure() -> None:
    """Print the measurement this installation's enclave code has, for owners' allowlists."""
    from .client.provisioning import local_measurement

    typer.echo(local_measurement())  # plain, unwrapped: scripts capture it


def _explain(exc: Any) -> str:
    """A service refusal in words that name the fix."""
    status, detail, path = exc.status, exc.detail, exc.path
    if status == 401:
        return ("the service did not accept the token (401). Pass --token or set CIPHERLOOP_TOKEN: "
                "the owner token (from the admin's POST /v1/admin/tenants) for init, status, "
                "pull and predict; a contributor token for upload.")
    if status == 403:
        return (f"this token's role may not do that (403: {detail}). init, status, pull and "
                f"hold-out uploads need the owner token; upload takes a contributor or owner "
                f"token; predict a predict or owner token.")
    if status == 404:
        return (f"not found (404): {path}. Check --model / CIPHERLOOP_MODEL (init prints the model "
                f"id) and that the token belongs to the tenant that made it.")
    return f"the service refused ({status}): {detail}"


def main() -> None:
    """Entry point: map cipherloop errors to exit codes with a one-line message."""
    from .client.service import ServiceError, ServiceUnavailable

    try:
        app(standalone_mode=True)
    except ServiceError as exc:
        err_console.print(f"[red]error:[/] {_explain(exc)}")
        sys.exit(EXIT_ERROR)
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

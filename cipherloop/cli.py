"""The ``cipherloop`` command.

Runs in: owner (demo, keys, data) and host (enclave, serve).

Exit codes: 0 success, 1 a cipherloop error (bad input, refused by the
enclave or the service), 2 usage error, 3 the enclave or service could not
be reached.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .errors import CipherloopError, EnclaveUnavailable

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


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(min=1, max=20, help="Rounds of new encrypted data.")] = 6,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs the cloud runs per round.")] = 8,
    out: Annotated[Path, typer.Option(help="Folder for the accuracy plot.")] = Path("cipherloop-demo"),
    params: Annotated[str, typer.Option(help="CKKS preset: n8192 or n16384.")] = "n8192",
) -> None:
    """Encrypted refinement on breast-cancer data, round by round, next to plaintext.

    Starts a real enclave process (simulated TEE platform), provisions it with a
    fresh CKKS key, and refines an encrypted model as new encrypted data arrives.
    Prints a table per round and saves a PNG plot of accuracy per round.
    """
    from . import demo as demo_mod
    from .attest import describe
    from .client.provisioning import simulated_policy
    from .learn import EnclaveProcess

    config = demo_mod.DemoConfig(rounds=rounds, epochs_per_round=epochs, params=params)
    table = Table(title="encrypted refinement vs plaintext: breast cancer, held-out test accuracy",
                  caption="gap = max |w_encrypted - w_plaintext| after decryption")
    for col in ("round", "seen", "enc acc", "plain acc", "gap", "sec", "refr", "encl s"):
        table.add_column(col, justify="right", no_wrap=True)
    console.print("[bold yellow]Simulated TEE:[/] the enclave runs as a separate local process "
                  "(platform 'sim'); it is not hardware-isolated. Simulation is explicitly allowed "
                  "for this demo.")
    with _progress() as progress, EnclaveProcess() as enclave:
        def on_attested(verified: Any) -> None:
            progress.console.print("[bold]enclave attested[/] (key released only after this):")
            for label, value in describe(verified):
                progress.console.print(f"  {label:<12} {value}")

        task = progress.add_task("refining", total=None)

        def on_progress(label: str, done: int, total: int) -> None:
            progress.update(task, description=label, completed=done, total=total)

        def on_round(r: demo_mod.RoundResult) -> None:
            table.add_row(str(r.round), str(r.samples_seen), f"{r.encrypted_accuracy:.3f}",
                          f"{r.plaintext_accuracy:.3f}", f"{r.max_weight_gap:.2e}", f"{r.seconds:.2f}",
                          str(r.refreshes), f"{r.enclave_seconds:.2f}")
            progress.console.print(f"round {r.round}: encrypted accuracy {r.encrypted_accuracy:.3f}, "
                                   f"plaintext {r.plaintext_accuracy:.3f}")

        results = demo_mod.run(config, enclave.client, simulated_policy(enclave.state_dir),
                               on_attested=on_attested, on_round=on_round, on_progress=on_progress)
    console.print(table)
    path = demo_mod.plot(results, out / "accuracy_per_round.png")
    console.print(f"plot saved to [bold]{path}[/]")


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


def main() -> None:
    """Entry point: map cipherloop errors to exit codes with a one-line message."""
    try:
        app()
    except EnclaveUnavailable as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_UNAVAILABLE)
    except CipherloopError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()

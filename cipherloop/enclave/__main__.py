"""``python -m cipherloop.enclave``: start the enclave process.

Runs in: enclave.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path

from ..errors import StateDirLocked
from .framing import DEFAULT_MAX_FRAME
from .server import EnclaveConfig, serve


def parser() -> argparse.ArgumentParser:
    """The enclave's command line (also what the Gramine manifest fixes in ``loader.argv``)."""
    p = argparse.ArgumentParser(prog="python -m cipherloop.enclave",
                                description="Serve the cipherloop enclave operations.")
    p.add_argument("--socket", required=True, type=Path, help="Unix socket path to listen on")
    p.add_argument("--state-dir", required=True, type=Path,
                   help="platform state and sealed keys (survive restarts)")
    p.add_argument("--platform", default="sim", choices=["sim", "sgx", "nitro"])
    p.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME)
    p.add_argument("--allow-local-provisioning", action="store_true",
                   help="also accept the unattested development key hand-over (tests only)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s enclave %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = EnclaveConfig(a.socket, a.state_dir, a.max_frame, a.platform,
                           a.allow_local_provisioning)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            serve(config)
    except StateDirLocked as exc:
        logging.getLogger("cipherloop.enclave").error("%s: %s", exc, a.state_dir)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

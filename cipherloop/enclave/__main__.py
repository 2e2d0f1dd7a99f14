"""``python -m cipherloop.enclave``: start the enclave process.

Runs in: enclave.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..errors import StateDirLocked
from .framing import DEFAULT_MAX_FRAME
from .server import EnclaveConfig, serve


def _die_with_parent(parent_pid: int, *, pdeathsig: bool) -> None:
    """Exit (as on SIGTERM) when the process that started the enclave dies, even by ``kill -9``.

    An orphaned enclave would keep every key in memory with nobody to stop
    it. A poll of the parent pid works everywhere; with ``pdeathsig`` Linux
    also signals at once (``PR_SET_PDEATHSIG``), which fires when the
    *thread* that started us ends, so the parent asks for it only from its
    main thread.
    """
    if pdeathsig and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


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
    p.add_argument("--parent-pid", type=int,
                   help="exit when this process dies (the service or owner that started it)")
    p.add_argument("--pdeathsig", action="store_true",
                   help="with --parent-pid: also have Linux signal at once when the starting "
                        "thread ends (start from the parent's main thread only)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if a.parent_pid is not None:
        _die_with_parent(a.parent_pid, pdeathsig=a.pdeathsig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s enclave %(levelname)s %(message)s")
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

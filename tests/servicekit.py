"""Starting the real service process for end-to-end tests, without the port race.

``ServiceProcess`` picks its port by binding port 0 and releasing it; another
process on the machine can take that port before uvicorn binds it, and the
service then exits at start. ``start_service`` starts again on a new port when
-- and only when -- the log says the address was taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cipherloop.cloud.process import ServiceProcess, ServiceStartError

ADDRESS_TAKEN = "address already in use"


def start_service(data_dir: Path, *, attempts: int = 3, **kw: Any) -> ServiceProcess:
    """``ServiceProcess(data_dir, **kw).start()``, retried on a new port if the port was taken."""
    for attempt in range(1, attempts + 1):
        service = ServiceProcess(data_dir, **kw)
        try:
            return service.start()
        except ServiceStartError:
            if attempt == attempts or ADDRESS_TAKEN not in service.log().lower():
                raise
    raise AssertionError("unreachable")

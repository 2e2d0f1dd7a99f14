"""Run one refinement round over a streamed data set in a fresh process; print its peak RSS.

Used by ``test_streaming.py`` as ``python streamkit.py CONTEXT STORE MANIFEST SOCKET WORKING_SET``:
a separate process, so its peak resident memory is this round's and nothing else's. The
peak is ``VmHWM`` of ``/proc/self/status``: ``ru_maxrss`` would carry the parent's peak
over ``fork`` and ``exec``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from cipherloop.blobstore import BlobStore
from cipherloop.ckks import PublicContext, Replicated
from cipherloop.learn import EnclaveClient, EncryptedModel, RefineConfig, refine
from cipherloop.learn.dataset import StreamedDataset
from cipherloop.learn.engine import LocalEngine


def peak_rss_kib() -> int:
    """This process's peak resident set (``VmHWM``), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(context_path: str, store: str, manifest: str, socket: str, working_set: str) -> None:
    ctx = PublicContext.load(Path(context_path).read_bytes())
    data = StreamedDataset.open(ctx, BlobStore(Path(store)), manifest)
    layout = Replicated.for_features(data.n_features, ctx.params.slots)
    model = EncryptedModel(layout, ctx.encrypt(layout.pack(np.zeros(data.n_features))),
                           ctx.encrypt(Replicated(1, 1, layout.slots).pack(0.0)))
    engine = LocalEngine(ctx, working_set=int(working_set))
    client = EnclaveClient(socket)
    _, stats = refine(model, [data], RefineConfig(momentum=0.0, batch_size=4096, epochs=2), context=ctx,
                      enclave=client, engine=engine)
    client.close()
    peak_kib = peak_rss_kib()
    print(json.dumps({"peak_mib": peak_kib / 1024, "steps": stats.steps,
                      "loads": engine.block_loads, "blocks": data.layout.n_blocks}))


if __name__ == "__main__":
    main(*sys.argv[1:])

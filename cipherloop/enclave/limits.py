"""The sizes the enclave's operations accept, in one place: the enclave enforces them, and the
owner's tools and the host read them to refuse early what the enclave would refuse anyway.

Runs in: enclave (imported by ``client``, ``learn`` and the CLI too). Documented in the
README's security notes, and ``tests/security/test_releases.py`` holds that text to these values.
"""

from __future__ import annotations

#: Classes of a softmax or MLP output layer.
MAX_CLASSES = 256
#: Hidden units of an MLP.
MAX_HIDDEN = 1024
#: Vectors one model part may hold: its classes or its hidden units.
MAX_UNITS = max(MAX_CLASSES, MAX_HIDDEN)
#: Batches one ``refresh`` call takes (the learner refreshes in chunks of this many).
MAX_BATCHES = 64

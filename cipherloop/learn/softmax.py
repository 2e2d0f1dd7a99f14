"""Encrypted multinomial logistic regression: the softmax kind of the refining loop.

Runs in: host. Per mini-batch, with ``K`` classes and the look-ahead point
``U = W + momentum * V`` (Sutskever's Nesterov form, as in
:mod:`.logistic`):

1. host: ``z_k = X @ u_k + b_k`` for every class ``k``;
2. enclave: ``E = (softmax(Z) - Y) * lr / m`` (:func:`cipherloop.enclave.nonlinear.softmax_error`),
   each column pre-rotated per giant step of ``X``'s layout;
3. host: ``g_k = X.T @ e_k``, ``w_k' = u_k - g_k``, ``b_k' = ub_k - sum(e_k)``.

Packing of the ``K`` weight vectors: ``K`` separate replicated vectors, each
multiplied into the *same* feature diagonals. Packing ``K`` vectors into one
ciphertext (``K * P <= slots``) saves no multiplication -- the features would
have to be replicated ``K`` times to meet them, so the data (and the upload)
grow ``K``-fold for the same count of slot products -- and the rotations that
line weights up with diagonals would cross the class lanes, which costs a
masking multiplication (a level) per baby step. With ``C`` blocks of the
mini-batch, ``P`` padded features, ``B`` baby and ``G`` giant steps, one step
costs (asserted exactly in ``tests/test_multiclass.py``):

===========================  ===============  ===================================  ==========
step                         ct x ct mults    rotations                            relins
===========================  ===============  ===================================  ==========
Z = X @ U   (host)           K * C * P        K * ((B - 1) + C * (G - 1))          K * C * G
E = softmax error (enclave)  --               --  (K * C * G encryptions out)      --
G = X.T @ E (host)           K * C * P        K * ((B - 1) + log2(slots / P))      K * B
===========================  ===============  ===================================  ==========

plus ``K`` plaintext products (one per intercept, moving it to the logits'
scale), ``K`` more with momentum (``momentum * v``) per group, and one
enclave call. A mini-batch smaller than a block pays only for the blocks it
touches: the host skips every other block and the enclave masks the
samples of its blocks outside ``[start, stop)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ckks import Ciphertext, CiphertextBatch, Diagonals
from . import kernels
from .logistic import RefineConfig, _Session
from .model import EncryptedDataset
from .network import VELOCITY, EncryptedNetwork


def lookahead(model: EncryptedNetwork, momentum: float) -> dict[str, list[Ciphertext]]:
    """``u = w + momentum * v`` for every weight group (``w`` itself before the first step)."""
    out: dict[str, list[Ciphertext]] = {}
    for name, cts in model.groups.items():
        if name.endswith(VELOCITY):
            continue
        vel = model.groups.get(name + VELOCITY)
        if momentum and vel is not None:
            out[name] = [w + v.times(momentum) for w, v in zip(cts, vel, strict=True)]
        else:
            out[name] = list(cts)
    return out


def window(layout: Diagonals, start: int, stop: int) -> list[int]:
    """The blocks samples ``[start, stop)`` touch: the only ones a step computes on."""
    S = layout.slots
    return list(range(start // S, (stop - 1) // S + 1))


def window_features(data: EncryptedDataset, blocks: Sequence[int]) -> list[Ciphertext]:
    """The feature ciphertexts of ``blocks`` only, in block-local order (block ``i`` of the
    window at ``layout.index(i, b1, b2)``): a step reads nothing outside its window.

    Uses a data set's ``block(c)`` where it has one (a data set streamed block by block).
    """
    block = getattr(data, "block", None)
    if callable(block):
        return [ct for c in blocks for ct in block(c)]
    P = data.layout.period
    return [ct for c in blocks for ct in data.features[c * P:(c + 1) * P]]


def products(features: Sequence[Ciphertext], layout: Diagonals, weights: Sequence[Ciphertext],
             intercepts: Sequence[Ciphertext] | None, blocks: Sequence[int]
             ) -> list[list[Ciphertext]]:
    """``X @ w_k + b_k`` for each weight vector, reusing the same feature diagonals."""
    bias: Sequence[Ciphertext | None] = intercepts if intercepts is not None else [None] * len(weights)
    return [kernels.logits(features, w, layout, blocks, b) for w, b in zip(weights, bias, strict=True)]


def gradients(session: _Session, features: Sequence[Ciphertext], layout: Diagonals,
              errors: Sequence[bytes], blocks: Sequence[int]) -> list[Ciphertext]:
    """``X.T @ e_k`` for each error batch the enclave returned (pre-rotated for ``layout``)."""
    out = []
    for raw in errors:
        e = CiphertextBatch.from_bytes(raw).open(session.context, count=len(blocks) * layout.giant)
        out.append(kernels.fold_replicas(kernels.gradient_partial(features, e, layout, blocks),
                                         layout))
    return out


def scalars(session: _Session, raw: bytes | None, count: int) -> list[Ciphertext]:
    """Replicated scalars the enclave returned (intercept gradients)."""
    assert raw is not None
    return CiphertextBatch.from_bytes(raw).open(session.context, count=count)


def step(model: EncryptedNetwork, data: EncryptedDataset, start: int, stop: int,
         config: RefineConfig, session: _Session) -> EncryptedNetwork:
    """One mini-batch step of multinomial logistic regression (module docstring)."""
    layout = data.layout
    blocks = window(layout, start, stop)
    c0 = blocks[0]
    u = lookahead(model, config.momentum)
    intercepts = u.get("intercept")
    feats, local = window_features(data, blocks), list(range(len(blocks)))
    z = products(feats, layout, u["coef"], intercepts, local)
    samples = layout.samples.describe()
    e_raws, s_raw, _ = session.enclave_call(
        session.enclave.softmax_error, session.key_id,
        z=[session.batch(zk, samples) for zk in z],
        y=session.batch(data.labels[c0:c0 + len(blocks)], samples),
        features=layout.describe(), first_block=c0, start=start, stop=stop,
        learning_rate=config.learning_rate, level=data.level, intercept=intercepts is not None,
    )
    g = gradients(session, feats, layout, e_raws, local)
    new = {"coef": [w - gk for w, gk in zip(u["coef"], g, strict=True)]}
    if intercepts is not None:
        s = scalars(session, s_raw, len(intercepts))
        new["intercept"] = [b - sk for b, sk in zip(intercepts, s, strict=True)]
    session.stats.steps += 1
    return model.stepped(new, config.momentum)

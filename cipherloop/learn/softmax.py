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
masking multiplication (a level) per baby step.

Packing of mini-batches: blocks are sized to the mini-batch with **lanes**
(:class:`~cipherloop.ckks.layout.Diagonals`): ``L`` lanes make a block of
``slots / L`` samples with ``J = P / L`` diagonals, every slot still busy,
so a step over ``m`` samples costs about ``m * P / slots`` products per
class instead of ``P`` (the HETAL shape, 1,024 x 768 -> 1,024 padded, 10
classes on 4,096 slots: ``L = 4``, 2,560 products per direction instead of
10,240). The enclave sums each sample's lanes after decrypting and writes
each error into every lane of its sample, so the host's kernels are the
ones of one lane. With ``C`` blocks of the mini-batch, ``J`` diagonals per
block, ``B`` baby and ``G = J / B`` giant steps, one step costs (asserted
exactly in ``tests/test_multiclass.py``):

===========================  ===============  ===================================  ==========
step                         ct x ct mults    rotations                            relins
===========================  ===============  ===================================  ==========
Z = X @ U   (host)           K * C * J        K * ((B - 1) + C * (G - 1))          K * C * G
E = softmax error (enclave)  --               --  (K * C * G encryptions out)      --
G = X.T @ E (host)           K * C * J        K * ((B - 1) + log2(slots / P))      K * B
===========================  ===============  ===================================  ==========

plus ``K`` plaintext products (one per intercept, moving it to the logits'
scale), ``K`` more with momentum (``momentum * v``) per group, and one
enclave call. A step computes only on the blocks ``[start, stop)`` touches;
the enclave masks the samples of those blocks outside it.
"""

from __future__ import annotations

from ..ckks import Ciphertext, CiphertextBatch, Diagonals
from .fanout import window_features
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
    m = layout.block
    return list(range(start // m, (stop - 1) // m + 1))


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
    feats = window_features(data, blocks)
    z = session.classes.products(data, blocks, feats, u["coef"], intercepts)
    samples = layout.samples.describe()
    e_raws, s_raw, _ = session.enclave_call(
        session.enclave.softmax_error, session.key_id,
        z=[session.batch(zk, samples) for zk in z],
        y=session.batch(data.labels[c0:c0 + len(blocks)], samples),
        features=layout.describe(), first_block=c0, start=start, stop=stop,
        learning_rate=config.learning_rate, level=data.level, intercept=intercepts is not None,
    )
    g = session.classes.gradients(data, blocks, feats, e_raws)
    new = {"coef": [w - gk for w, gk in zip(u["coef"], g, strict=True)]}
    if intercepts is not None:
        s = scalars(session, s_raw, len(intercepts))
        new["intercept"] = [b - sk for b, sk in zip(intercepts, s, strict=True)]
    session.stats.steps += 1
    return model.stepped(new, config.momentum)

"""Encrypted one-hidden-layer perceptron: the MLP kind of the refining loop.

Runs in: host. Every matrix product of the forward and backward pass runs
here on ciphertexts; the enclave computes only the activation, its
derivative and the softmax error, re-encrypting each in the layout the next
product needs. With look-ahead weights ``U = W + momentum * V``, per mini-batch:

1. host: ``Z1 = X @ U1 + b1`` (``H`` products over the data's diagonals);
2. enclave ``mlp_hidden``: ``A = act(Z1)`` as an ``H``-feature diagonal
   layout (the new "features") and as errors for ``E.T @ A``;
3. host: ``Z2 = A @ U2 + b2`` (``K`` products over ``A``'s diagonals);
4. enclave ``softmax_error``: ``E = (softmax(Z2) - Y) * lr / m``, pre-rotated
   for ``A.T @ E``, and ``E`` as a ``K``-feature diagonal layout;
5. host: ``G2 = A.T @ E``, ``G2t = E.T @ A`` (the same gradient, for the
   transposed copy ``U2t`` of the output weights), ``P = E @ U2t.T``;
6. enclave ``mlp_backward``: ``delta = P * act'(Z1)`` -- ``Z1`` resent by the
   host, the enclave keeps nothing between calls -- pre-rotated for ``X.T @ delta``;
7. host: ``G1 = X.T @ delta`` and every ``w' = u - g``, ``v' = w' - w``.

Keeping ``W2`` twice (columns for the forward product, rows for the
backward one) costs ``H`` extra vectors and one extra gradient but avoids
transposing an encrypted matrix, which would take a rotation and a masking
level per entry. Levels stay inside the ``n8192`` preset (3 rescales)
because the enclave re-encrypts at every activation: ``A`` and ``E`` arrive
fresh at the top level, so no chain is longer than look-ahead (one level
with momentum), one product and one gradient.

With ``C`` blocks in the mini-batch, ``P1`` (``Ph``, ``Pk``) the padded
input (hidden, class) widths, one step costs ``C * (2*H*P1 + 2*K*Ph + 2*H*Pk)``
ct x ct products (asserted exactly in ``tests/test_multiclass.py``) and three
enclave calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ckks import Ciphertext, CiphertextBatch, Diagonals
from ..ckks.context import _ContextBase
from ..ckks.layout import from_description
from ..errors import EnclaveUnavailable, ShapeError
from .enclave_client import EnclaveClient
from .fanout import class_gradients, class_products, window_features
from .logistic import LevelPlanner, RefineConfig, RefineStats, _Session, refresh_model
from .model import EncryptedDataset
from .network import EncryptedNetwork
from .softmax import lookahead, scalars, window


def _diagonals(session: _Session, raw: bytes) -> tuple[Diagonals, list[Ciphertext]]:
    batch = CiphertextBatch.from_bytes(raw)
    layout = from_description(batch.layout)
    if not isinstance(layout, Diagonals):
        raise ShapeError("the enclave returned features in an unexpected layout")
    return layout, batch.open(session.context, count=layout.n_blocks * layout.per_block)


def step(model: EncryptedNetwork, data: EncryptedDataset, start: int, stop: int,
         config: RefineConfig, session: _Session) -> EncryptedNetwork:
    """One mini-batch step of the MLP (module docstring)."""
    lx = data.layout
    if lx.lanes != 1:
        # The hidden layer's layout holds the window's samples one per slot; labels in
        # lanes would need the enclave to move them between layouts (not built).
        raise ShapeError("the MLP refines data in one lane (encrypt with lanes=1)")
    blocks = window(lx, start, stop)
    c0 = blocks[0]
    lo = c0 * lx.block
    K, act = model.n_classes, model.activation
    u = lookahead(model, config.momentum)
    b1, b2 = u.get("intercept1"), u.get("intercept2")
    key, enclave = session.key_id, session.enclave
    samples = lx.samples.describe()
    common = {"features": lx.describe(), "first_block": c0, "start": start, "stop": stop}

    feats = window_features(data, blocks)
    z1 = class_products(feats, lx, u["coef1"], b1, len(blocks))
    z1_raw = [session.batch(z, samples) for z in z1]
    a_raw, a_err = session.enclave_call(enclave.mlp_hidden, key, z=z1_raw, activation=act,
                                        n_classes=K, **common)
    la, a = _diagonals(session, a_raw)
    z2 = class_products(a, la, u["coef2"], b2, la.n_blocks)
    la_samples = la.samples.describe()
    e_raws, s2_raw, e_diag = session.enclave_call(
        enclave.softmax_error, key, z=[session.batch(z, la_samples) for z in z2],
        y=session.batch(data.labels[c0:c0 + len(blocks)], la_samples),
        features=la.describe(), first_block=0, start=start - lo, stop=stop - lo,
        learning_rate=config.learning_rate, level=a[0].level, intercept=b2 is not None,
        transposed=True)
    assert e_diag is not None
    le, e = _diagonals(session, e_diag)
    g2 = class_gradients(session.context, a, la, e_raws, la.n_blocks)
    g2t = class_gradients(session.context, e, le, a_err, le.n_blocks)
    p = class_products(e, le, u["coef2t"], None, le.n_blocks)
    d_raws, s1_raw = session.enclave_call(
        enclave.mlp_backward, key, p=[session.batch(x, samples) for x in p], z=z1_raw,
        activation=act, level=data.level, intercept=b1 is not None, **common)
    g1 = class_gradients(session.context, feats, lx, d_raws, len(blocks))

    new = {"coef1": [w - g for w, g in zip(u["coef1"], g1, strict=True)],
           "coef2": [w - g for w, g in zip(u["coef2"], g2, strict=True)],
           "coef2t": [w - g for w, g in zip(u["coef2t"], g2t, strict=True)]}
    if b1 is not None:
        new["intercept1"] = [b - s for b, s in zip(b1, scalars(session, s1_raw, len(b1)), strict=True)]
    if b2 is not None:
        new["intercept2"] = [b - s for b, s in zip(b2, scalars(session, s2_raw, K), strict=True)]
    session.stats.steps += 1
    return model.stepped(new, config.momentum)


def scores(model: EncryptedNetwork, features: Sequence[Ciphertext], layout: Diagonals, *,
           context: _ContextBase, enclave: EnclaveClient | None) -> list[list[Ciphertext]]:
    """Encrypted output logits, one list of per-block ciphertexts per class (encrypted inference).

    The softmax model needs only the host's products; the MLP asks the
    enclave for the hidden activations once (``mlp_hidden`` over every block).
    """
    if model.n_features != layout.n_features:
        raise ShapeError("features and model disagree on the number of features")
    planner = LevelPlanner(0.0)
    if model.kind == "softmax" and not planner.needs_refresh(model):
        return class_products(features, layout, model.groups["coef"], model.group("intercept"),
                              layout.n_blocks)
    if enclave is None:
        raise EnclaveUnavailable("this model needs the enclave for inference")
    session = _Session(context, enclave, RefineStats())
    if planner.needs_refresh(model):
        model = refresh_model(model, session)
    if model.kind == "softmax":
        return class_products(features, layout, model.groups["coef"], model.group("intercept"),
                              layout.n_blocks)
    z1 = class_products(features, layout, model.groups["coef1"], model.group("intercept1"),
                        layout.n_blocks)
    a_raw, _ = session.enclave_call(
        enclave.mlp_hidden, context.key_id,
        z=[session.batch(z, layout.samples.describe()) for z in z1],
        features=layout.describe(), first_block=0, start=0, stop=layout.n_samples,
        activation=model.activation, n_classes=model.n_classes)
    la, a = _diagonals(session, a_raw)
    return class_products(a, la, model.groups["coef2"], model.group("intercept2"), la.n_blocks)

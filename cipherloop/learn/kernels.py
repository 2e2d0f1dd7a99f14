"""The host's packed linear algebra for logistic regression: ``X @ w`` and ``X.T @ e``.

Runs in: host. Pure functions: ciphertexts in, ciphertexts out.

Packing (see ``ckks/layout.py``): features in generalised diagonals
pre-rotated by giant steps, the model replicated with period ``P`` (features
padded to a power of two), labels/logits/errors one per slot (with ``L``
lanes, one per slot of each lane: see ``Diagonals``). With ``C`` blocks of
``slots / L`` samples, ``P`` padded features, ``J = P / L`` diagonals per
block and ``B`` baby steps (``G = J / B`` giant steps), one mini-batch over
its blocks costs:

============================  ==============  ==========================  ========
step                          ct x ct mults   rotations                   relins
============================  ==============  ==========================  ========
z = X @ w  (host)             C * J           (B - 1) + C * (G - 1)        C * G
e = error step (enclave)      --              --  (C*G encryptions out)     --
g = X.T @ e  (host)           C * J           (B - 1) + log2(slots / P)    B
============================  ==============  ==========================  ========

plus two enclave round trips per step (the error step; a refresh when the
level planner says so). The straightforward column-packed reference needs
``C * P`` multiplications with a relinearisation each and
``P * log2(slots)`` rotations for the gradient alone. The saving comes from
three levers: the enclave emits errors pre-rotated per giant step (it
re-encrypts anyway, so any layout is free), products are summed before one
relinearisation, and baby/giant steps are walked Horner-style so one Galois
key per direction suffices.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ckks import Ciphertext, Diagonals, finish, inner, product_sum


def rotated_model(w: Ciphertext, layout: Diagonals) -> list[Ciphertext]:
    """``[rot(w, b1) for b1 in range(baby)]``, one unit rotation at a time."""
    out = [w]
    for _ in range(1, layout.baby):
        out.append(out[-1].rotate(1))
    return out


def logits_block(features: Sequence[Ciphertext], w_rot: Sequence[Ciphertext],
                 layout: Diagonals, block: int, bias: Ciphertext | None = None) -> Ciphertext:
    """``z`` for one block of samples: ``sum_b2 rot(sum_b1 Y[b1,b2] * rot(w, b1), baby*b2)``.

    ``bias`` must already sit at the product's scale and level (see :func:`bias_term`).
    """
    acc: Ciphertext | None = None
    for b2 in reversed(range(layout.giant)):
        idx = [layout.index(block, b1, b2) for b1 in range(layout.baby)]
        part = inner([features[i] for i in idx], w_rot)
        acc = part if acc is None else acc.rotate(layout.baby) + part
    assert acc is not None
    return acc + bias if bias is not None else acc


def bias_term(intercept: Ciphertext, w_level: int, product_scale: float,
              lanes: int = 1) -> Ciphertext:
    """The intercept moved to the level and exact scale of ``X @ w``'s blocks.

    With ``lanes`` the replicated intercept lands in every lane of a sample,
    whose lanes the enclave sums: each lane gets ``1 / lanes`` of it, folded
    into the plaintext product that moves the scale anyway.
    """
    b = intercept.at_level(w_level)
    return b.times(1.0 / lanes, scale=product_scale / b.scale * b.next_prime)


def logits(features: Sequence[Ciphertext], w: Ciphertext, layout: Diagonals,
           blocks: Sequence[int], intercept: Ciphertext | None = None) -> list[Ciphertext]:
    """``z = X @ w + intercept`` for the given blocks, one ciphertext per block."""
    scale = features[layout.index(blocks[0], 0, 0)].scale
    w_rot, bias = model_terms(w, intercept, layout, scale)
    return [logits_block(features, w_rot, layout, c, bias) for c in blocks]


def model_terms(w: Ciphertext, intercept: Ciphertext | None, layout: Diagonals,
                feature_scale: float) -> tuple[list[Ciphertext], Ciphertext | None]:
    """What every block's ``X @ w`` needs: the rotated model and the bias at the product's scale.

    Deterministic in its inputs, so workers that each compute it from the same
    broadcast model get bit-identical ciphertexts.
    """
    bias = None
    if intercept is not None:
        # Product scale: features * w, divided by the prime the rescale drops.
        bias = bias_term(intercept, w.level, feature_scale * w.scale / w.next_prime, layout.lanes)
    return rotated_model(w, layout), bias


def gradient_terms(block: Sequence[Ciphertext], errors: Sequence[Ciphertext],
                   layout: Diagonals) -> list[Ciphertext]:
    """One block's share of ``X.T @ e``: per baby step, ``sum_b2 Y[b1,b2] * E[b2]``, unfinished.

    ``block`` holds the block's ``period`` feature ciphertexts (block-local
    order, as :meth:`Diagonals.index` with block 0), ``errors`` its ``giant``
    error ciphertexts. The terms stay unrelinearised: terms of disjoint blocks
    add up exactly (:func:`add_terms`), in any order and on any worker, and
    :func:`finish_gradient` relinearises each baby step once.
    """
    G = layout.giant
    return [product_sum([block[layout.index(0, b1, b2)] for b2 in range(G)], list(errors[:G]))
            for b1 in range(layout.baby)]


def add_terms(a: Sequence[Ciphertext], b: Sequence[Ciphertext]) -> list[Ciphertext]:
    """Sum two blocks' (or two workers') :func:`gradient_terms`; exact modular additions."""
    return [x + y for x, y in zip(a, b, strict=True)]


def finish_terms(terms: Sequence[Ciphertext], layout: Diagonals) -> Ciphertext:
    """``sum_b1 rot(finish(terms[b1]), -b1)``, Horner-style: the partial before the fold."""
    acc: Ciphertext | None = None
    for b1 in reversed(range(layout.baby)):
        part = finish(terms[b1])
        acc = part if acc is None else acc.rotate(-1) + part
    assert acc is not None
    return acc


def gradient_partial(features: Sequence[Ciphertext], errors: Sequence[Ciphertext],
                     layout: Diagonals, blocks: Sequence[int]) -> Ciphertext:
    """``sum_b1 rot(sum_{c,b2} Y[c,b1,b2] * E[c,b2], -b1)`` before the replicas are folded.

    ``errors[i * giant + b2]`` belongs to ``blocks[i]``. Partials of disjoint
    block sets add up; :func:`fold_replicas` finishes the sum.
    """
    P, G = layout.per_block, layout.giant
    terms: list[Ciphertext] | None = None
    for i, c in enumerate(blocks):
        t = gradient_terms(features[c * P:(c + 1) * P], errors[i * G:(i + 1) * G], layout)
        terms = t if terms is None else add_terms(terms, t)
    assert terms is not None
    return finish_terms(terms, layout)


def fold_replicas(partial: Ciphertext, layout: Diagonals) -> Ciphertext:
    """Sum the ``slots / period`` replicas so every replica holds the full ``X.T @ e``."""
    k = layout.period
    acc = partial
    while k < layout.slots:
        acc = acc + acc.rotate(k)
        k *= 2
    return acc

"""Slot layouts, exactly: sizes, index arithmetic, masks, rotations and their wire form.

Plain numpy, no ciphers: ``cipherloop/ckks/layout.py`` is index arithmetic that
the owner, the host and the enclave must agree on to the slot, and the enclave
rebuilds layouts from untrusted wire descriptions (``from_description``). The
packing identities the kernels rely on are in ``test_ckks.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import numpy as np
import pytest

from cipherloop.ckks import Diagonals, Replicated, SampleBlocks, rotations_for_features
from cipherloop.ckks.layout import from_description
from cipherloop.errors import ShapeError


# --------------------------------------------------------------------- sample blocks
@pytest.mark.parametrize(("n", "slots", "blocks"), [(1, 8, 1), (8, 8, 1), (9, 8, 2), (16, 8, 2),
                                                     (17, 8, 3)])
def test_sample_blocks_count(n: int, slots: int, blocks: int) -> None:
    assert SampleBlocks(n, slots).n_blocks == blocks


@pytest.mark.parametrize("n", [0, -1])
def test_sample_blocks_need_a_sample(n: int) -> None:
    with pytest.raises(ShapeError, match="at least one sample"):
        SampleBlocks(n, 8)


def test_sample_blocks_pack_pads_with_zeros_and_unpacks() -> None:
    layout = SampleBlocks(10, 4)
    packed = layout.pack(np.arange(1.0, 11.0))
    assert [list(b) for b in packed] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert list(layout.unpack(packed)) == list(np.arange(1.0, 11.0))
    # Extra slots beyond ``slots`` (a longer decrypted vector) are ignored.
    assert list(layout.unpack([np.r_[b, 99.0] for b in packed])) == list(np.arange(1.0, 11.0))


@pytest.mark.parametrize("values", [np.zeros(9), np.zeros(11), np.zeros((2, 6))])
def test_sample_blocks_pack_checks_the_count(values: np.ndarray) -> None:
    with pytest.raises(ShapeError, match="expected 10 values"):
        SampleBlocks(10, 4).pack(values)


@pytest.mark.parametrize("blocks", [2, 4])
def test_sample_blocks_unpack_checks_the_block_count(blocks: int) -> None:
    with pytest.raises(ShapeError, match="expected 3 blocks"):
        SampleBlocks(10, 4).unpack([np.zeros(4)] * blocks)


def test_mask_marks_exactly_the_range() -> None:
    layout = SampleBlocks(10, 4)
    assert np.concatenate(layout.mask()).tolist() == [1.0] * 10 + [0.0] * 2
    assert np.concatenate(layout.mask(3, 6)).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert np.concatenate(layout.mask(5)).tolist() == [0] * 5 + [1] * 5 + [0, 0]
    assert len(layout.mask()) == 3 and all(len(m) == 4 for m in layout.mask())


def test_sample_blocks_describe() -> None:
    assert SampleBlocks(10, 4).describe() == {"kind": "samples", "n_samples": 10, "slots": 4}


# ------------------------------------------------------------------------ replicated
@pytest.mark.parametrize(("n", "period"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (16, 16), (17, 32)])
def test_replicated_period_is_the_next_power_of_two(n: int, period: int) -> None:
    layout = Replicated.for_features(n, 64)
    assert (layout.n_values, layout.period, layout.slots) == (n, period, 64)


@pytest.mark.parametrize(("n", "period", "slots"), [(3, 3, 64), (3, 6, 64), (5, 4, 64), (3, 128, 64)])
def test_replicated_refuses_bad_periods(n: int, period: int, slots: int) -> None:
    with pytest.raises(ShapeError, match="power of two"):
        Replicated(n, period, slots)


def test_replicated_accepts_the_edges() -> None:
    assert Replicated(4, 4, 4).period == 4      # period == slots, n == period
    assert Replicated(1, 1, 8).period == 1


def test_replicated_pack_repeats_the_padded_vector() -> None:
    layout = Replicated(3, 4, 12)
    assert layout.pack([1.0, 2.0, 3.0]).tolist() == [1, 2, 3, 0] * 3
    assert Replicated(1, 1, 4).pack(2.5).tolist() == [2.5] * 4  # a scalar is one value


@pytest.mark.parametrize("values", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
def test_replicated_pack_checks_the_count(values: list[float]) -> None:
    with pytest.raises(ShapeError, match="expected 3 values"):
        Replicated(3, 4, 12).pack(values)


def test_replicated_unpack_averages_the_replicas() -> None:
    layout = Replicated(3, 4, 8)
    slots = np.array([1.0, 2.0, 3.0, 9.0, 3.0, 4.0, 5.0, 9.0, 100.0])  # one extra slot, ignored
    assert layout.unpack(slots).tolist() == [2.0, 3.0, 4.0]


def test_replicated_describe() -> None:
    assert Replicated(3, 4, 8).describe() == {"kind": "replicated", "n_values": 3, "period": 4,
                                              "slots": 8}


# ------------------------------------------------------------------------- diagonals
@pytest.mark.parametrize(("d", "period", "baby", "giant"), [
    (1, 1, 1, 1), (2, 2, 2, 1), (5, 8, 8, 1), (16, 16, 16, 1), (17, 32, 16, 2), (64, 64, 16, 4),
])
def test_diagonals_plan(d: int, period: int, baby: int, giant: int) -> None:
    layout = Diagonals.plan(100, d, 256)
    assert (layout.period, layout.baby, layout.giant) == (period, baby, giant)
    assert layout.samples == SampleBlocks(100, 256)
    assert layout.model == Replicated(d, period, 256)
    assert layout.n_blocks == 1


@pytest.mark.parametrize(("args", "match"), [
    ((0, 3, 64, 1), "at least one sample and one feature"),
    ((10, 0, 64, 1), "at least one sample and one feature"),
    ((10, 65, 64, 1), "at most 64 features"),
    ((10, 8, 64, 3), "divide"),
    ((10, 8, 64, 0), "divide"),
    ((10, 8, 64, 16), "divide"),
])
def test_diagonals_refuse_bad_shapes(args: tuple[int, int, int, int], match: str) -> None:
    with pytest.raises(ShapeError, match=match):
        Diagonals(*args)


def test_diagonals_accept_the_edges() -> None:
    assert Diagonals(1, 64, 64, 64).period == 64   # period == slots, baby == period
    assert Diagonals(1, 1, 64, 1).giant == 1


def test_diagonal_index_walks_block_then_giant_then_baby() -> None:
    layout = Diagonals(600, 32, 256, 8)  # 3 blocks, 4 giant steps, 8 baby steps
    seen = [layout.index(c, b1, b2) for c in range(3) for b2 in range(4) for b1 in range(8)]
    assert seen == list(range(3 * 4 * 8))
    assert layout.index(1, 2, 3) == (1 * 4 + 3) * 8 + 2


def test_diagonal_pack_places_each_feature_by_hand() -> None:
    layout = Diagonals(6, 3, 4, 2)  # period 4, baby 2, giant 2, two blocks
    X = np.arange(18.0).reshape(6, 3) + 1.0
    packed = layout.pack(X)
    assert len(packed) == layout.n_blocks * layout.period == 8
    padded = np.zeros((8, 4))
    padded[:6, :3] = X
    t = np.arange(4)
    for c in range(2):
        for b2 in range(2):
            for b1 in range(2):
                diag = padded[c * 4 + t, (t + b1 + 2 * b2) % 4]
                assert packed[layout.index(c, b1, b2)].tolist() == np.roll(diag, 2 * b2).tolist()


@pytest.mark.parametrize("shape", [(6, 2), (5, 3), (6,), (6, 3, 1)])
def test_diagonal_pack_checks_the_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ShapeError, match=r"expected X of shape \(6, 3\)"):
        Diagonals(6, 3, 4, 2).pack(np.zeros(shape))


def test_errors_are_pre_rotated_per_giant_step() -> None:
    layout = Diagonals(6, 3, 4, 2)
    e = np.arange(1.0, 7.0)
    packed = layout.pack_errors(e)
    blocks = SampleBlocks(6, 4).pack(e)
    assert len(packed) == 2 * 2
    for c in range(2):
        for b2 in range(2):
            assert packed[c * 2 + b2].tolist() == np.roll(blocks[c], 2 * b2).tolist()


@pytest.mark.parametrize(("d", "slots", "steps"), [
    (1, 16, [1, 2, 4, 8, 15]),          # P=1: fold by every power of two
    (4, 16, [1, 4, 8, 15]),             # one giant step: no giant rotation key
    (32, 64, [1, 16, 32, 63]),          # two giant steps of 16
    (64, 64, [1, 16, 63]),              # P == slots: nothing to fold
    (16, 16, [1, 15]),                  # P == slots, one giant step: the unit steps alone
])
def test_rotations_are_exactly_the_kernels_steps(d: int, slots: int, steps: list[int]) -> None:
    assert Diagonals.plan(10, d, slots).rotations() == steps


def test_rotations_for_features_cover_every_smaller_width() -> None:
    steps = rotations_for_features(32, 64)
    assert steps == [1, 2, 4, 8, 16, 32, 63]
    for d in range(1, 33):
        assert set(Diagonals.plan(10, d, 64).rotations()) <= set(steps)


def test_diagonals_describe() -> None:
    assert Diagonals(6, 3, 4, 2).describe() == {"kind": "diagonals", "n_samples": 6, "n_features": 3,
                                                "slots": 4, "baby": 2}


# ------------------------------------------------------------- wire descriptions
@pytest.mark.parametrize("layout", [SampleBlocks(10, 4), Replicated(3, 4, 8), Diagonals(6, 3, 4, 2)])
def test_layouts_round_trip_through_their_description(layout: Any) -> None:
    assert from_description(layout.describe()) == layout


@pytest.mark.parametrize("desc", [
    {},
    {"kind": "pixels", "n_samples": 10, "slots": 4},
    {"kind": "samples", "slots": 4},
    {"kind": "samples", "n_samples": "ten", "slots": 4},
    {"kind": "samples", "n_samples": None, "slots": 4},
    {"kind": "replicated", "n_values": 3, "period": 4},
    {"kind": "diagonals", "n_samples": 6, "n_features": 3, "slots": 4},
    {"kind": "diagonals", "n_samples": [6], "n_features": 3, "slots": 4, "baby": 2},
    {"kind": "samples", "n_samples": 0, "slots": 4},
    {"kind": "replicated", "n_values": 5, "period": 4, "slots": 8},
    {"kind": "diagonals", "n_samples": 6, "n_features": 3, "slots": 4, "baby": 3},
    [],
    None,
])
def test_malformed_descriptions_are_one_shape_error(desc: Any) -> None:
    with pytest.raises(ShapeError) as info:
        from_description(desc)
    assert type(info.value) is ShapeError


@pytest.mark.parametrize("layout", [SampleBlocks(10, 4), Replicated(3, 4, 8), Diagonals(6, 3, 4, 2)])
def test_descriptions_from_the_wire_rebuild_the_layout(layout: Any) -> None:
    wire = cbor2.loads(cbor2.dumps(layout.describe()))  # strings as a decoder makes them
    assert from_description(wire) == layout


@pytest.mark.parametrize("kind", ["zzz", "t", "s", "samples2", "replicatedx", "e", "diagonalz",
                                  "a", "d", "r"])
def test_only_the_three_kinds_are_layouts(kind: str) -> None:
    desc = {"kind": kind, "n_samples": 6, "n_features": 3, "slots": 4, "baby": 2, "n_values": 3,
            "period": 4}
    with pytest.raises(ShapeError, match="unknown or malformed"):
        from_description(desc)


@pytest.mark.parametrize("layout", [SampleBlocks(10, 4), Replicated(3, 4, 8), Diagonals(6, 3, 4, 2)])
def test_layouts_are_immutable(layout: Any) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.slots = 8


def test_block_counts_are_compared_by_value() -> None:
    layout = SampleBlocks(300, 1)  # 300 blocks: beyond the small ints Python shares
    assert layout.unpack([np.array([float(i)]) for i in range(300)]).tolist() == list(range(300))


def test_rotations_at_the_real_slot_count() -> None:
    powers = [1 << k for k in range(12)]  # 1 .. 2048
    assert Diagonals.plan(10, 4, 4096).rotations() == [1, *[p for p in powers if p >= 4], 4095]
    assert Diagonals.plan(10, 64, 4096).rotations() == [1, 16, 64, 128, 256, 512, 1024, 2048, 4095]
    assert rotations_for_features(64, 4096) == [*powers, 4095]


def test_replicated_counts_are_compared_by_value() -> None:
    layout = Replicated(300, 512, 1024)  # 300 values: beyond the small ints Python shares
    assert layout.pack(np.arange(300.0))[:300].tolist() == list(range(300))


def test_diagonals_unpack_names_the_count_it_expects() -> None:
    layout = Diagonals.plan(5000, 20, 4096)  # 2 blocks x 32 diagonals
    with pytest.raises(ShapeError, match="expected 64 diagonals, got 63"):
        layout.unpack(layout.pack(np.zeros((5000, 20)))[:-1])


# ------------------------------------------------------------------------- lanes
def _rot(v: np.ndarray, k: int) -> np.ndarray:
    return np.roll(v, -k)


def _kernels_in_numpy(layout: Diagonals, arrays: list[np.ndarray], w: np.ndarray,
                      e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``learn/kernels.py``'s walk on plain slot vectors: per-slot logits and the folded gradient."""
    B, G, S = layout.baby, layout.giant, layout.slots
    wr = layout.model.pack(w)
    z = []
    for c in range(layout.n_blocks):
        acc = None
        for b2 in reversed(range(G)):
            part = sum(arrays[layout.index(c, b1, b2)] * _rot(wr, b1) for b1 in range(B))
            acc = part if acc is None else _rot(acc, B) + part
        z.append(acc)
    errors = layout.pack_errors(e)
    grad = None
    for b1 in reversed(range(B)):
        part = sum(arrays[layout.index(c, b1, b2)] * errors[c * G + b2]
                   for c in range(layout.n_blocks) for b2 in range(G))
        grad = part if grad is None else _rot(grad, -1) + part
    assert grad is not None
    k = layout.period
    while k < S:
        grad = grad + _rot(grad, k)
        k *= 2
    return np.stack(z), grad


@pytest.mark.parametrize(("n", "d", "slots", "lanes"), [
    (300, 30, 512, 4), (1000, 64, 4096, 16), (2100, 768, 4096, 4), (100, 5, 64, 2),
    (77, 8, 64, 1), (40, 16, 256, 16), (5, 3, 16, 4),
])
def test_lanes_give_the_kernels_exact_products(n: int, d: int, slots: int, lanes: int) -> None:
    """The unchanged kernels compute ``X @ w`` (lanes summed) and ``X.T @ e`` on any lane count."""
    rng = np.random.default_rng(n)
    layout = Diagonals.plan(n, d, slots, lanes)
    X, w, e = rng.normal(size=(n, d)), rng.normal(size=d), rng.normal(size=n)
    arrays = layout.pack(X)
    assert len(arrays) == layout.n_blocks * layout.per_block == layout.n_blocks * layout.period // lanes
    assert np.array_equal(layout.unpack(arrays), X)
    z, grad = _kernels_in_numpy(layout, arrays, w, e)
    assert np.allclose(layout.samples.fold(z)[:n], X @ w)
    assert np.allclose(grad[:d], X.T @ e)
    assert np.allclose(grad[layout.period:layout.period + d], X.T @ e)  # every replica


def test_a_lane_puts_each_sample_once_per_lane_on_its_feature_window() -> None:
    layout = Diagonals.plan(8, 8, 32, 4)  # blocks of 8 samples, 2 diagonals, 4 lanes
    samples = layout.samples
    assert (samples.block, samples.lanes, samples.shift, layout.per_block) == (8, 4, 2, 2)
    pos = samples.positions()
    assert sorted(pos.ravel().tolist()) == list(range(32))
    for i in range(8):  # sample i's lanes start on features i, i+2, i+4, i+6 (mod 8)
        assert sorted(int(p) % 8 for p in pos[:, i]) == sorted((i + 2 * lane) % 8 for lane in range(4))
    assert np.array_equal(samples.sample_at()[pos[2]], np.arange(8))


def test_sample_blocks_in_lanes_spread_read_lane_zero_and_fold() -> None:
    layout = SampleBlocks(10, 16, 4, 1)  # blocks of 4 samples
    packed = layout.pack(np.arange(10.0))
    assert len(packed) == 3
    assert np.array_equal(layout.unpack(packed), np.arange(10.0))
    assert np.array_equal(layout.fold(np.stack(packed))[:10], 4 * np.arange(10.0))
    assert np.array_equal(packed[0][layout.positions()], np.tile(np.arange(4.0), (4, 1)))
    assert [m.sum() for m in layout.mask(3, 6)] == [4.0, 8.0, 0.0]


@pytest.mark.parametrize(("batch", "d", "lanes"), [
    (1024, 768, 4), (100, 64, 32), (200, 64, 16), (30, 13, 16), (1, 64, 64), (5000, 64, 1),
    (1, 4096, 1), (64, 1, 1),
])
def test_lanes_for_fits_the_block_to_the_batch(batch: int, d: int, lanes: int) -> None:
    assert Diagonals.lanes_for(batch, d, 4096) == lanes
    layout = Diagonals.plan(batch, d, 4096, lanes)
    assert layout.block >= min(batch, 4096) or layout.block == 4096 // lanes


@pytest.mark.parametrize("args", [
    (6, 3, 16, 1, 3),      # not a power of two
    (6, 3, 16, 1, 8),      # more lanes than padded features
    (6, 4, 8, 1, 4),       # lanes * period > slots
    (6, 4, 16, 4, 2),      # baby does not divide period / lanes
    (6, 4, 16, 1, 0),
])
def test_diagonals_refuse_bad_lanes(args: tuple[int, int, int, int, int]) -> None:
    with pytest.raises(ShapeError):
        Diagonals(*args)


@pytest.mark.parametrize("args", [(10, 16, 3, 1), (10, 16, 4, 4), (10, 16, 1, 1), (10, 16, 0, 0)])
def test_sample_blocks_refuse_bad_lanes(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ShapeError):
        SampleBlocks(*args)


@pytest.mark.parametrize("layout", [Diagonals(100, 30, 512, 8, 4), SampleBlocks(100, 512, 4, 8)])
def test_lanes_round_trip_and_one_lane_keeps_the_old_description(layout: Any) -> None:
    assert from_description(cbor2.loads(cbor2.dumps(layout.describe()))) == layout
    one = dataclasses.replace(layout, lanes=1, **({"shift": 0} if isinstance(layout, SampleBlocks)
                                                  else {"baby": 16}))
    assert "lanes" not in one.describe() and "shift" not in one.describe()
    assert from_description({**layout.describe(), "lanes": 2}) != layout


def test_lane_slots_follow_the_documented_wire_layout() -> None:
    """Owner, host and enclave agree through this formula: lane ``l`` holds sample ``i`` at
    ``l*block + (i + l*shift) % block``, with ``shift = period / lanes``."""
    layout = Diagonals.plan(16, 8, 64, 4)  # blocks of 16 samples, shift 2
    pos = layout.samples.positions()
    for lane in range(4):
        for i in range(16):
            assert pos[lane, i] == lane * 16 + (i + 2 * lane) % 16
    assert Diagonals.lanes_for(1, 64, 4096) == layout.lanes_for(1, 64, 4096) == 64


@pytest.mark.parametrize("args", [
    (10, 24, 3, 0),    # 3 lanes divide 24 slots but are no power of two
    (10, 18, 4, 1),    # a power of two that does not divide the slots
    (10, 16, 4, -1),   # shift below 0
    (10, 16, 4, 4),    # shift of a whole block
    (10, 16, 4, 5),    # beyond it
])
def test_sample_blocks_refuse_lanes_and_shifts_off_the_grid(args: tuple[int, int, int, int]) -> None:
    with pytest.raises(ShapeError):
        SampleBlocks(*args)


def test_lanes_plan_refuses_zero_lanes_as_a_shape_error() -> None:
    with pytest.raises(ShapeError):
        Diagonals.plan(10, 8, 64, 0)


def test_unpack_refuses_one_diagonal_too_many() -> None:
    layout = Diagonals.plan(10, 8, 64, 2)
    arrays = layout.pack(np.ones((10, 8)))
    with pytest.raises(ShapeError):
        layout.unpack([*arrays, arrays[0]])


@pytest.mark.parametrize("layout", [Diagonals(100, 30, 512, 8, 2), SampleBlocks(100, 512, 2, 16)])
def test_two_lanes_are_described(layout: Any) -> None:
    assert layout.describe()["lanes"] == 2
    assert from_description(layout.describe()) == layout


@pytest.mark.parametrize(("value", "ok"), [
    (1, True), (2**31, True), (0, False), (2**31 + 1, False), (True, False), (10.0, False), (-3, False),
])
def test_layout_counts_are_true_integers_in_range(value: Any, ok: bool) -> None:
    desc = {"kind": "samples", "n_samples": value, "slots": 4}
    if ok:
        assert from_description(desc) == SampleBlocks(value, 4)
    else:
        with pytest.raises(ShapeError):
            from_description(desc)


def test_a_lane_description_with_no_shift_is_refused() -> None:
    """Lanes always shift by ``period / lanes >= 1``; a wire layout of unshifted lanes is malformed."""
    with pytest.raises(ShapeError):
        from_description({"kind": "samples", "n_samples": 10, "slots": 16, "lanes": 4, "shift": 0})

"""What may leave the enclave: exactly what the owner's policy names, rounded, budgeted.

Each test pins one promise of the README's security notes to a behaviour that
breaks when the promise does (the planted bugs of the issue "Tests that catch
what they claim").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from enclavekit import logits_batch
from hostkit import World, batch, holdout_data, make_world, view

from cipherloop.ckks import CiphertextBatch, Diagonals, PublicContext, Replicated, SecretContext
from cipherloop.enclave.limits import MAX_BATCHES, MAX_CLASSES, MAX_HIDDEN, MAX_UNITS
from cipherloop.enclave.policy import coarse

SLOTS = 4096
README = Path(__file__).resolve().parents[2] / "README.md"


def _model(host: PublicContext, w: np.ndarray, b: float | None = None) -> dict[str, bytes]:
    lay = Replicated(len(w), len(w), SLOTS)
    out = {"coef": batch(host, [host.encrypt(lay.pack(w))], lay.describe())}
    if b is not None:
        rep = Replicated(1, 1, SLOTS)
        out["intercept"] = batch(host, [host.encrypt(rep.pack(b))], rep.describe())
    return out


def _truth(sec_key: SecretContext, w: World, coef: np.ndarray, b: float) -> dict[str, float]:
    """The metrics computed at home, in plaintext, from the pinned hold-out set."""
    f, lab = (CiphertextBatch.from_bytes(x) for x in w.holdout)
    diag = Diagonals(**{k: v for k, v in f.layout.items() if k != "kind"})
    y = diag.samples.unpack([sec_key.decrypt(c) for c in lab.open(sec_key)])
    X, labels = holdout_data()
    assert np.allclose(y, labels, atol=1e-4)
    z = np.clip(X @ coef + b, -16, 16)
    return {"accuracy": float(np.mean((z > 0) == (y > 0.5))),
            "log_loss": float(np.mean(np.logaddexp(0, z) - y * z))}


def test_evaluate_is_rounded_and_matches_plaintext(tmp_path: Path, sec_key: SecretContext,
                                                   host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key)
    coef, b = np.array([1.3, -0.2, 0.1, 0.05]), 0.1
    f, lab = w.holdout
    got = w.call("evaluate", model=_model(host, coef, b), features=f, labels=lab,
                 metrics=["accuracy", "log_loss"])["result"]
    truth = _truth(sec_key, w, coef, b)
    for m in ("accuracy", "log_loss"):
        assert got[m] == coarse(got[m])  # rounded to 1e-3 on the wire
        assert abs(got[m] - truth[m]) <= 5e-4 + 1e-6, m
    w.enclave.close()


def test_compare_releases_only_named_metrics_and_only_when_asked(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, release=["accuracy"])
    f, lab = w.holdout
    good, bad = _model(host, np.array([2.0, 0, 0, 0])), _model(host, np.array([-2.0, 0, 0, 0]))
    loss = w.call("compare", candidate=good, current=bad, features=f, labels=lab,
                  metric="log_loss", with_metrics=True)["result"]
    assert loss == {"promote": True}  # log_loss is not released under this policy
    acc = w.call("compare", candidate=bad, current=good, features=f, labels=lab,
                 metric="accuracy", with_metrics=True)["result"]
    assert acc["promote"] is False and acc["candidate"] < acc["current"]
    assert acc["candidate"] == coarse(acc["candidate"]) and acc["current"] == coarse(acc["current"])
    quiet = w.call("compare", candidate=good, current=bad, features=f, labels=lab,
                   metric="accuracy")["result"]
    assert quiet == {"promote": True}
    assert w.enclave.keys.get(w.key_id).state.spent_total == 1 + 3 + 1
    w.enclave.close()


def test_compare_metrics_are_rounded(tmp_path: Path, sec_key: SecretContext,
                                     host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, release=["log_loss"])
    f, lab = w.holdout
    coef = np.array([0.731, -0.113, 0.057, 0.021])
    got = w.call("compare", candidate=_model(host, coef, 0.0123), current=_model(host, -coef),
                 features=f, labels=lab, metric="log_loss", with_metrics=True)["result"]
    truth = _truth(sec_key, w, coef, 0.0123)["log_loss"]
    assert got["candidate"] == coarse(got["candidate"]) and got["current"] == coarse(got["current"])
    assert got["candidate"] != truth and abs(got["candidate"] - truth) <= 5e-4 + 1e-6
    w.enclave.close()


def test_compare_without_permission_for_decisions_releases_nothing(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, allow_decision=False)
    f, lab = w.holdout
    m = _model(host, np.ones(4))
    reply = w.call("compare", candidate=m, current=m, features=f, labels=lab)
    assert view(reply)[:2] == ("refused", "PolicyViolation")
    assert w.enclave.keys.get(w.key_id).state.spent_total == 0
    w.enclave.close()


def test_evaluate_refuses_metrics_the_policy_does_not_name(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, release=["accuracy"])
    f, lab = w.holdout
    reply = w.call("evaluate", model=_model(host, np.ones(4)), features=f, labels=lab,
                   metrics=["accuracy", "log_loss"])
    assert view(reply)[:2] == ("refused", "PolicyViolation")
    assert w.enclave.keys.get(w.key_id).state.spent_total == 0
    w.enclave.close()


def test_model_of_another_width_is_refused(tmp_path: Path, sec_key: SecretContext,
                                           host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key)
    f, lab = w.holdout
    reply = w.call("evaluate", model=_model(host, np.ones(8)), features=f, labels=lab,
                   metrics=["accuracy"])
    assert view(reply)[:2] == ("refused", "ShapeError")
    w.enclave.close()


@pytest.mark.parametrize("z,expected_p", [(1e6, 1.0), (-1e6, 0.0), (1.5, 1 / (1 + np.exp(-1.5))),
                                          (0.0, 0.5)])
def test_error_step_clips_logits_at_the_policy_bound(
        tmp_path: Path, host: PublicContext, sec_key: SecretContext,
        z: float, expected_p: float) -> None:
    world = make_world(tmp_path, sec_key, clip=2.0)
    diag = Diagonals.plan(40, 4, SLOTS)
    samples = diag.samples
    y = np.zeros(40)
    y[::2] = 1.0
    reply: dict[str, Any] = world.call(
        "logistic_error", z=logits_batch(host, samples.pack(np.full(40, z)), samples.describe()),
        y=batch(host, [host.encrypt(samples.pack(y)[0], level=0)], samples.describe()),
        features=diag.describe(), first_block=0, start=0, stop=40, learning_rate=2.0, level=3,
        intercept=False)
    e_cts = CiphertextBatch.from_bytes(reply["result"]["e"]).open(sec_key)
    e = sec_key.decrypt(e_cts[0])[:40]  # giant step 0 is not rotated
    p = 1 / (1 + np.exp(-np.clip(z, -2.0, 2.0)))  # the policy's clip, not the value sent
    assert np.allclose(e, (p - y) * 2.0 / 40, atol=1e-6)
    assert expected_p == pytest.approx(p) or abs(z) > 2.0
    world.enclave.close()


def test_an_all_zero_model_scores_like_any_other(tmp_path: Path, sec_key: SecretContext,
                                                 host: PublicContext) -> None:
    """A model of exact zeros once made SEAL throw ("transparent ciphertext") after decryption."""
    w = make_world(tmp_path, sec_key)
    f, lab = w.holdout
    zero = _model(host, np.zeros(4), 0.0)
    reply = w.call("compare", candidate=zero, current=zero, features=f, labels=lab,
                   with_metrics=True)
    assert reply["ok"], reply
    assert reply["result"] == {"promote": True, "candidate": coarse(np.log(2)),
                               "current": coarse(np.log(2))}
    w.enclave.close()


# ------------------------------------------------------------ multiclass and MLP releases
def _parts(host: PublicContext, rows: np.ndarray, layout: Replicated,
           level: int | None = None) -> bytes:
    return batch(host, [host.encrypt(layout.pack(r), level=level) for r in np.atleast_2d(rows)],
                 layout.describe())


def _softmax(host: PublicContext, W: np.ndarray, b: np.ndarray | None = None,
             level: int | None = None) -> dict[str, bytes]:
    out = {"coef": _parts(host, W, Replicated(4, 4, SLOTS), level)}
    if b is not None:
        out["intercept"] = _parts(host, b[:, None], Replicated(1, 1, SLOTS), level)
    return out


def _mlp(host: PublicContext, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray,
         act: str) -> dict[str, Any]:
    scalar = Replicated(1, 1, SLOTS)
    return {"coef1": _parts(host, W1, Replicated(4, 4, SLOTS)),
            "intercept1": _parts(host, b1[:, None], scalar),
            "coef2": _parts(host, W2, Replicated.for_features(W1.shape[0], SLOTS)),
            "intercept2": _parts(host, b2[:, None], scalar), "activation": act}


def _class_metrics(z: np.ndarray, y: np.ndarray, clip: float = 16.0) -> dict[str, float]:
    """Softmax metrics at home, written apart from the enclave's: clipped logits, class indices."""
    zc = np.clip(z, -clip, clip)
    logp = zc - np.log(np.exp(zc).sum(axis=1, keepdims=True))
    idx = y.astype(int)
    return {"accuracy": float(np.mean(zc.argmax(axis=1) == idx)),
            "log_loss": float(-np.mean(logp[np.arange(len(idx)), idx]))}


_ACT = {"relu": lambda a: np.maximum(a, 0.0), "tanh": np.tanh,
        "logistic": lambda a: 1 / (1 + np.exp(-a))}
_W = np.array([[1.2, -0.3, 0.2, 0.1], [0.1, 0.9, -0.4, 0.3], [-0.5, 0.2, 0.7, -0.2]])
_B = np.array([0.3, -0.2, 0.1])


def _refusal(w: World, model: dict[str, Any], metrics: list[str] | None = None) -> Any:
    """What the host sees of an ``evaluate`` that must be refused, having checked it cost nothing."""
    reply = w.call("evaluate", model=model, features=w.holdout[0], labels=w.holdout[1],
                   metrics=["accuracy"] if metrics is None else metrics)
    assert w.enclave.keys.get(w.key_id).state.spent_total == 0
    return view(reply)


def _close(got: dict[str, float], truth: dict[str, float]) -> None:
    for m, v in got.items():
        assert v == coarse(v), m  # rounded to 1e-3 on the wire
        assert abs(v - truth[m]) <= 5e-4 + 1e-6, (m, v, truth[m])


def test_evaluate_of_a_softmax_model_matches_plaintext(tmp_path: Path, sec_key: SecretContext,
                                                     host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, classes=3)
    X, y = holdout_data(3)
    for model, z in ((_softmax(host, _W, _B), X @ _W.T + _B), (_softmax(host, _W), X @ _W.T)):
        got = w.call("evaluate", model=model, features=w.holdout[0], labels=w.holdout[1],
                     metrics=["accuracy", "log_loss"])["result"]
        truth = _class_metrics(z, y)
        assert 0.5 < truth["accuracy"] < 1.0  # neither trivial nor perfect: a wrong index shows
        _close(got, truth)
    w.enclave.close()


@pytest.mark.parametrize("act", sorted(_ACT))
def test_evaluate_of_an_mlp_matches_plaintext(tmp_path: Path, sec_key: SecretContext,
                                             host: PublicContext, act: str) -> None:
    w = make_world(tmp_path, sec_key, classes=3, clip=4.0)
    X, y = holdout_data(3)
    W2 = np.array([[2.0, -0.5, 0.3], [-0.4, 1.8, -0.6], [0.2, -0.7, 2.1]])
    b2 = np.array([-0.1, 0.2, 0.05])
    got = w.call("evaluate", model=_mlp(host, 3 * _W, _B, W2, b2, act), features=w.holdout[0],
                 labels=w.holdout[1], metrics=["accuracy", "log_loss"])["result"]
    hidden = _ACT[act](np.clip(X @ (3 * _W).T + _B, -4.0, 4.0))  # the policy's clip, then the unit
    _close(got, _class_metrics(hidden @ W2.T + b2, y, clip=4.0))
    w.enclave.close()


def test_compare_of_multiclass_models_decides_on_plaintext_metrics(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key, classes=3)
    X, y = holdout_data(3)
    good, worse = _softmax(host, _W, _B), _softmax(host, -_W)
    net = _mlp(host, _W, _B, np.eye(3), np.zeros(3), "tanh")  # relu's ties would go to the noise
    for cand, cur, zc, zk in ((good, worse, X @ _W.T + _B, -X @ _W.T),
                              (worse, net, -X @ _W.T, np.tanh(X @ _W.T + _B))):
        for metric in ("accuracy", "log_loss"):
            got = w.call("compare", candidate=cand, current=cur, features=w.holdout[0],
                         labels=w.holdout[1], metric=metric, with_metrics=True)["result"]
            a, b = _class_metrics(zc, y)[metric], _class_metrics(zk, y)[metric]
            assert got["promote"] is bool(a >= b if metric == "accuracy" else a <= b)
            _close({"candidate": got["candidate"], "current": got["current"]},
                   {"candidate": a, "current": b})
    w.enclave.close()


def test_compare_refuses_models_with_other_outputs(tmp_path: Path, sec_key: SecretContext,
                                                   host: PublicContext) -> None:
    """A binary model (one logit) and a two-class softmax both have two classes, yet score
    differently: comparing them, or models of other class counts, is refused before decrypting."""
    w = make_world(tmp_path, sec_key, classes=3)
    binary, two = _model(host, _W[0], 0.1), _softmax(host, _W[:2])
    three, net = _softmax(host, _W), _mlp(host, _W, _B, np.eye(3)[:2], np.zeros(2), "tanh")
    narrow2 = _mlp(host, _W[:1], _B[:1], np.array([[1.0], [-1.0]]), np.zeros(2), "tanh")
    narrow3 = _mlp(host, _W[:1], _B[:1], np.array([[1.0], [-1.0], [0.5]]), np.zeros(3), "tanh")
    for cand, cur in ((binary, two), (two, binary), (three, two), (net, three), (three, binary),
                      (binary, narrow2), (narrow3, binary)):
        reply = w.call("compare", candidate=cand, current=cur, features=w.holdout[0],
                       labels=w.holdout[1], metric="accuracy")
        assert view(reply)[:2] == ("refused", "ShapeError")
    assert w.enclave.keys.get(w.key_id).state.spent_total == 0
    # One hidden unit makes one first-layer vector, yet the network still outputs classes.
    for cand, cur in ((narrow2, two), (two, narrow2), (narrow2, net)):
        reply = w.call("compare", candidate=cand, current=cur, features=w.holdout[0],
                       labels=w.holdout[1], metric="accuracy")
        assert reply["ok"], reply
    w.enclave.close()


@pytest.mark.parametrize("edit,refusal", [
    ({"coef2": None}, "BadRequest"),  # an MLP needs its output layer
    ({"activation": "softplus"}, "BadRequest"),
    ({"activation": None}, "BadRequest"),
    ({"coef": b"x"}, "BadRequest"),  # binary and MLP parts mixed
    ({"coef1": 7}, "BadRequest"),  # a part that is no batch
    ({"intercept2": "two"}, "BadRequest"),
    ("one output", "ShapeError"),
    ("intercepts short", "ShapeError"),
    ("intercepts long", "ShapeError"),
    ("hidden width", "ShapeError"),
])
def test_malformed_mlps_are_refused_before_decryption(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext,
        edit: dict[str, Any] | str, refusal: str) -> None:
    w = make_world(tmp_path, sec_key, classes=3)
    model = _mlp(host, _W, _B, np.eye(3), np.zeros(3), "tanh")
    if edit == "one output":
        model.update(coef2=_parts(host, np.ones(3), Replicated.for_features(3, SLOTS)),
                     intercept2=None)
    elif edit == "intercepts short":
        model["intercept1"] = _parts(host, _B[:2, None], Replicated(1, 1, SLOTS))
    elif edit == "intercepts long":
        model["intercept2"] = _parts(host, np.zeros((4, 1)), Replicated(1, 1, SLOTS))
    elif edit == "hidden width":
        model["coef2"] = _parts(host, np.eye(4)[:3], Replicated.for_features(4, SLOTS))
    else:
        assert isinstance(edit, dict)
        model.update(edit)
    got = _refusal(w, model)
    assert got[:2] == ("refused", refusal)
    if edit in ({"coef1": 7}, {"intercept2": "two"}, {"coef": b"x"}):  # the map's own check
        assert got[2].startswith("a model is a map of 'coef' and optional 'intercept'")
    w.enclave.close()


@pytest.mark.parametrize("part", ["coef", "intercept"])
def test_a_model_part_of_no_vectors_is_refused(tmp_path: Path, sec_key: SecretContext,
                                               host: PublicContext, part: str) -> None:
    w = make_world(tmp_path, sec_key)
    model = _model(host, np.ones(4), 0.5)
    model[part] = batch(host, [], CiphertextBatch.from_bytes(model[part]).layout)
    assert _refusal(w, model) == ("refused", "ShapeError", "a model part holds 1 to 1024 vectors")
    w.enclave.close()


@pytest.mark.parametrize("metrics", [[], ["accuracy", "accuracy"], ["auc"], ["accuracy", "f1"]])
def test_metric_names_must_be_distinct_known_names(tmp_path: Path, sec_key: SecretContext,
                                                   host: PublicContext, metrics: list[str]) -> None:
    w = make_world(tmp_path, sec_key, release=["accuracy", "log_loss"])
    assert _refusal(w, _model(host, np.ones(4)), metrics)[:2] == ("refused", "BadRequest")
    w.enclave.close()


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_a_tie_promotes_the_candidate(tmp_path: Path, sec_key: SecretContext,
                                      host: PublicContext, metric: str) -> None:
    """Equal scores keep refining moving: the candidate is promoted, on either metric."""
    w = make_world(tmp_path, sec_key)
    m = _model(host, np.array([1.0, 0.5, 0.0, 0.0]), 0.2)
    reply = w.call("compare", candidate=m, current=m, features=w.holdout[0],
                   labels=w.holdout[1], metric=metric)
    assert reply["result"] == {"promote": True}, reply
    w.enclave.close()


def test_a_model_part_holds_at_most_the_unit_limit(tmp_path: Path, sec_key: SecretContext,
                                                   host: PublicContext) -> None:
    """``MAX_UNITS`` vectors score, one more is refused before decryption: at the real limit,
    with one small ciphertext repeated (about 120 MB of batch)."""
    w = make_world(tmp_path, sec_key, classes=3)
    lay = Replicated(4, 4, SLOTS)
    one = host.encrypt(lay.pack(_W[0]), level=0)
    for n, ok in ((MAX_UNITS, True), (MAX_UNITS + 1, False)):
        model = {"coef": batch(host, [one] * n, lay.describe())}
        reply = w.call("evaluate", model=model, features=w.holdout[0], labels=w.holdout[1],
                       metrics=["accuracy"])
        assert reply["ok"] if ok else view(reply)[:2] == ("refused", "ShapeError")
    assert w.enclave.keys.get(w.key_id).state.spent_total == 1
    w.enclave.close()


def test_a_softmax_of_hundreds_of_classes_scores_exactly(tmp_path: Path, sec_key: SecretContext,
                                                         host: PublicContext) -> None:
    """300 classes with intercepts: counts past the small integers Python shares, checked by
    value. The 297 classes no sample has still weigh in every log-loss term."""
    w = make_world(tmp_path, sec_key, classes=3)
    X, y = holdout_data(3)
    W, b = np.zeros((300, 4)), np.full(300, -5.0)
    W[:3], b[:3] = _W, _B
    model = _softmax(host, W, b, level=0)
    got = w.call("evaluate", model=model, features=w.holdout[0],
                 labels=w.holdout[1], metrics=["accuracy", "log_loss"])["result"]
    _close(got, _class_metrics(X @ W.T + b, y))
    same = w.call("compare", candidate=model, current=model, features=w.holdout[0],
                  labels=w.holdout[1], metric="log_loss")
    assert same["ok"] and same["result"] == {"promote": True}, same
    w.enclave.close()


def test_the_readme_states_the_enclaves_limits() -> None:
    text = " ".join(README.read_text().split())
    m = re.search(r"at most ([\d,]+) classes and ([\d,]+) hidden units, ([\d,]+) vectors in a "
                  r"model part, ([\d,]+) batches in a refresh call", text)
    assert m, "the README's security notes moved or reworded the enclave's limits"
    stated = tuple(int(g.replace(",", "")) for g in m.groups())
    assert stated == (MAX_CLASSES, MAX_HIDDEN, MAX_UNITS, MAX_BATCHES)


def test_decrypted_values_are_mapped_into_their_range_by_construction() -> None:
    """The README's promise, on values no exact-scale ciphertext decrypts to today (SEAL's
    decoder returns finite values): NaN becomes 0, infinities the range's ends, then clipped."""
    from types import SimpleNamespace

    from cipherloop.enclave.api import _reveal

    entry: Any = SimpleNamespace(context=SimpleNamespace(decrypt=np.asarray))
    raw = [np.array([np.nan, np.inf, -np.inf, 5.0, -5.0, 0.25])]
    assert _reveal(entry, raw, -2.0, 3.0).tolist() == [[0.0, 3.0, -2.0, 3.0, -2.0, 0.25]]
    assert _reveal(entry, raw, 0.5, 3.0).tolist() == [[0.5, 3.0, 0.5, 3.0, 0.5, 0.5]]


def test_a_binary_model_without_intercept_scores_exactly(tmp_path: Path, sec_key: SecretContext,
                                                         host: PublicContext) -> None:
    w = make_world(tmp_path, sec_key)
    coef = np.array([0.9, -0.4, 0.3, 0.2])
    got = w.call("evaluate", model=_model(host, coef), features=w.holdout[0],
                 labels=w.holdout[1], metrics=["accuracy", "log_loss"])["result"]
    _close(got, _truth(sec_key, w, coef, 0.0))
    w.enclave.close()


@pytest.mark.parametrize("kind", ["softmax", "mlp"])
def test_models_without_intercepts_clip_their_own_logits(tmp_path: Path, sec_key: SecretContext,
                                                         host: PublicContext, kind: str) -> None:
    """Logits past the clip (2) with no intercept: a bias the enclave added by mistake would move
    them across the clip, and softmax metrics are blind to a shift only inside it."""
    w = make_world(tmp_path, sec_key, classes=3, clip=2.0)
    X, y = holdout_data(3)
    if kind == "softmax":
        model, z = _softmax(host, 2 * _W), X @ (2 * _W).T
    else:
        W2 = np.array([[4.0, -1.0, 0.5], [-1.0, 3.5, -0.5], [0.5, -1.5, 4.5]])
        hidden = np.tanh(np.clip(X @ _W.T, -2.0, 2.0))
        model = _mlp(host, _W, np.zeros(3), W2, np.zeros(3), "tanh")
        model.pop("intercept1"), model.pop("intercept2")
        z = hidden @ W2.T
    assert np.abs(z).max() > 2.5
    got = w.call("evaluate", model=model, features=w.holdout[0], labels=w.holdout[1],
                 metrics=["accuracy", "log_loss"])["result"]
    _close(got, _class_metrics(z, y, clip=2.0))
    w.enclave.close()


def test_labels_of_a_pinned_set_outside_the_classes_count_as_the_nearest(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    """An owner pinned labels it should not have (5, -1, 2.4): clipped to ``[0, K-1]`` and
    rounded, in ``evaluate`` and ``compare`` alike -- never an index error after decryption."""
    X, y = holdout_data(3)
    bad = y.copy()
    bad[:4] = [5.0, -1.0, 2.4, 7.0]
    w = make_world(tmp_path, sec_key, classes=3, labels=bad)
    near = np.rint(np.clip(bad, 0, 2))
    model, z = _softmax(host, _W, _B), X @ _W.T + _B
    got = w.call("evaluate", model=model, features=w.holdout[0], labels=w.holdout[1],
                 metrics=["accuracy", "log_loss"])["result"]
    _close(got, _class_metrics(z, near))
    cmp = w.call("compare", candidate=model, current=_softmax(host, -_W), features=w.holdout[0],
                 labels=w.holdout[1], metric="log_loss", with_metrics=True)["result"]
    _close({"candidate": cmp["candidate"]}, {"candidate": _class_metrics(z, near)["log_loss"]})
    w.enclave.close()


def test_a_pinned_set_whose_labels_are_laid_out_for_other_samples_is_refused(
        tmp_path: Path, sec_key: SecretContext, host: PublicContext) -> None:
    """The owner pinned 41 labels with 40 samples' features: nothing is decrypted or charged."""
    w = make_world(tmp_path, sec_key, labels=np.zeros(41))
    assert _refusal(w, _model(host, np.ones(4))) == (
        "refused", "ShapeError", "hold-out labels must be sample blocks of the features' samples")
    w.enclave.close()

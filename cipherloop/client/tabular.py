"""Raw tabular data at home: CSV files with errors that name the fix, and standardisation.

Runs in: owner and contributors (and predict clients). A data file is a CSV
of numbers, one sample per line, the label (0 or 1) in the last column
(``label_column`` chooses another), with an optional header line first; or
an ``.npz`` with arrays ``X`` and ``y``. The owner fits a
:class:`Standardizer` on its own data at ``init``; the service keeps it with
the model, and everyone who encrypts features for that model applies it
first, so the encrypted model always sees standardised inputs.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CipherloopError

CSV_LAYOUT = ("one sample per line, numbers separated by commas, the label (0 or 1) in the "
              "last column, optionally a header line first")


class DataFileError(CipherloopError, ValueError):
    """A data file can't be used; the message names the file, the place and the fix."""


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def read_table(path: Path) -> np.ndarray:
    """The numbers of a CSV file as a 2-D array; a first line with text is a header.

    Raises
    ------
    DataFileError
        Unreadable, empty, a non-numeric or non-finite cell (named by line
        and column), or rows of different lengths.
    """
    try:
        with open(path, newline="") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), start=1)
                    if any(cell.strip() for cell in row)]
    except OSError as exc:
        raise DataFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError):
        raise DataFileError(f"{path} is not a text CSV file; expected {CSV_LAYOUT}") from None
    if rows and any(_number(c) is None for c in rows[0][1]):
        rows = rows[1:]  # a header line
    if not rows:
        raise DataFileError(f"{path} holds no samples; expected {CSV_LAYOUT}")
    width = len(rows[0][1])
    out = np.empty((len(rows), width))
    for r, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DataFileError(f"{path} line {line}: {len(row)} columns, but the first sample "
                                f"has {width}; every line needs the same number of columns")
        for c, cell in enumerate(row):
            value = _number(cell)
            if value is None or not math.isfinite(value):
                raise DataFileError(f"{path} line {line}, column {c + 1}: {cell.strip()[:20]!r} "
                                    f"is not a finite number; expected {CSV_LAYOUT}")
            out[r, c] = value
    return out


def load_xy(path: Path, label_column: int | None = None, *, n_classes: int = 2
            ) -> tuple[np.ndarray, np.ndarray]:
    """Features and 0/1 labels from a CSV (label last by default) or an ``.npz`` (``X``, ``y``).

    Raises
    ------
    DataFileError
    """
    if path.suffix == ".npz":
        try:
            doc = np.load(path)
            X, y = np.asarray(doc["X"], dtype=float), np.asarray(doc["y"], dtype=float).ravel()
        except (OSError, KeyError, ValueError) as exc:
            raise DataFileError(f"cannot read {path} (an .npz with arrays X and y): "
                                f"{exc}") from None
        if X.ndim != 2 or len(X) != len(y) or not len(y):
            raise DataFileError(f"{path}: X must be 2-D with one row per label in y")
    else:
        table = read_table(path)
        if table.shape[1] < 2:
            raise DataFileError(f"{path} has one column; expected features and then the label "
                                f"({CSV_LAYOUT})")
        col = table.shape[1] - 1 if label_column is None else label_column
        if not -table.shape[1] <= col < table.shape[1]:
            raise DataFileError(f"{path} has {table.shape[1]} columns; --label-column {col} "
                                f"is not one of them")
        X, y = np.delete(table, col, axis=1), table[:, col]
    if not np.all(np.isfinite(X)):
        raise DataFileError(f"{path}: every feature must be a finite number")
    bad = np.flatnonzero((y != np.rint(y)) | (y < 0) | (y >= n_classes))
    if bad.size:
        which = "0 or 1" if n_classes == 2 else f"class numbers 0 to {n_classes - 1}"
        raise DataFileError(f"{path}: labels must be {which}; sample {bad[0] + 1} has "
                            f"{y[bad[0]]:g} (is the label in the last column?)")
    return X, y


def load_x(path: Path) -> np.ndarray:
    """Features only: a CSV (every column a feature), ``.npy``, or ``.npz`` with ``X``.

    Raises
    ------
    DataFileError
    """
    if path.suffix in (".npy", ".npz"):
        try:
            raw = np.load(path)
            X = np.asarray(raw["X"] if path.suffix == ".npz" else raw, dtype=float)
        except (OSError, KeyError, ValueError) as exc:
            raise DataFileError(f"cannot read {path}: {exc}") from None
        X = X.reshape(1, -1) if X.ndim == 1 else X
        if not np.all(np.isfinite(X)):
            raise DataFileError(f"{path}: every feature must be a finite number")
        return X
    return read_table(path)


def check_width(path: Path, X: np.ndarray, n_features: int) -> None:
    """Refuse data whose feature count is not the model's, naming both."""
    if X.shape[1] != n_features:
        raise DataFileError(f"{path} has {X.shape[1]} feature columns, the model has "
                            f"{n_features} (a CSV for upload also has the label column last)")


@dataclass(frozen=True)
class Standardizer:
    """``(x - mean) / scale`` per feature, as scikit-learn's ``StandardScaler`` fits it.

    Parameters
    ----------
    mean, scale : tuple of float
        One entry per feature; a constant feature gets scale 1.
    """

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        """Fit on the owner's own data (population standard deviation, like scikit-learn)."""
        X = np.asarray(X, dtype=float)
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    @classmethod
    def from_service(cls, doc: dict[str, Any]) -> Standardizer | None:
        """From ``GET /v1/models/{id}/preprocessing``; ``None`` for raw features."""
        if doc.get("kind") != "standardize":
            return None
        return cls(tuple(float(v) for v in doc["mean"]), tuple(float(v) for v in doc["scale"]))

    def to_service(self) -> dict[str, Any]:
        return {"kind": "standardize", "mean": list(self.mean), "scale": list(self.scale)}

    def transform(self, X: np.ndarray) -> np.ndarray:
        out: np.ndarray = (np.asarray(X, dtype=float) - np.asarray(self.mean)) / np.asarray(
            self.scale)
        return out

    def fold(self, coef: np.ndarray, intercept: float) -> tuple[np.ndarray, float]:
        """The same model on raw features: ``w·(x-m)/s + b == (w/s)·x + (b - w·m/s)``."""
        w = np.asarray(coef, dtype=float) / np.asarray(self.scale)
        return w, float(intercept - w @ np.asarray(self.mean))


def apply(pre: Standardizer | None, X: np.ndarray) -> np.ndarray:
    """``pre.transform(X)``, or ``X`` unchanged for a model without preprocessing."""
    if pre is None:
        raw: np.ndarray = np.asarray(X, dtype=float)
        return raw
    return pre.transform(X)

"""The trust boundary is visible in the imports.

The enclave's measured tree (``cipherloop/enclave``, ``cipherloop/ckks``,
``cipherloop/errors.py``) imports only the standard library, an allowlist of
distributions and its own modules; the enclave imports no untrusted layer. The
checks read source with :mod:`ast` (every import statement, lazy ones inside
functions too) and never import or write anything in the package.
"""

from __future__ import annotations

import ast
import functools
import sys
from importlib import metadata
from pathlib import Path

import pytest

import cipherloop

PKG = Path(cipherloop.__file__).parent
FORBIDDEN = ("cloud", "client", "learn", "attest")
# What the enclave process may load: the README's "imports only ckks and standard or crypto libraries".
ENCLAVE_DISTRIBUTIONS = frozenset({"numpy", "cbor2", "cryptography", "tenseal"})
ENCLAVE_OWN = ("cipherloop.ckks", "cipherloop.errors", "cipherloop.enclave")


def _imports(path: Path, root: Path = PKG.parent) -> list[str]:
    """Every module ``path`` imports, absolute; ``from a import b`` yields ``a`` and ``a.b``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    package = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names if a.name != "*"]
    return names


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return dict(metadata.packages_distributions())


def _untrusted_layer(name: str) -> bool:
    return any(name == f"cipherloop.{m}" or name.startswith(f"cipherloop.{m}.") for m in FORBIDDEN)


def _outside_enclave_allowlist(name: str) -> str | None:
    """Why ``name`` may not be imported by the enclave's tree, or None when it may."""
    top = name.split(".")[0]
    if top == "__future__" or top in sys.stdlib_module_names:
        return None
    if top == "cipherloop":
        ok = name == "cipherloop" or any(name == p or name.startswith(p + ".") for p in ENCLAVE_OWN)
        return None if ok else "cipherloop module outside the enclave's tree"
    dists = _distributions().get(top)
    if not dists:
        return "no installed distribution provides it"
    extra = set(dists) - ENCLAVE_DISTRIBUTIONS
    return f"distribution {sorted(extra)} not on the allowlist" if extra else None


def _enclave_tree(pkg: Path) -> list[Path]:
    files = sorted((pkg / "enclave").rglob("*.py")) + sorted((pkg / "ckks").rglob("*.py"))
    return files + [pkg / "errors.py", pkg / "__init__.py"]


def _violations(pkg: Path) -> list[tuple[str, str, str]]:
    return [(str(f.relative_to(pkg)), name, why)
            for f in _enclave_tree(pkg) for name in _imports(f, pkg.parent)
            if (why := _outside_enclave_allowlist(name)) is not None]


def test_enclave_imports_no_untrusted_layer() -> None:
    files = sorted((PKG / "enclave").rglob("*.py"))
    assert files
    bad = [(f.name, name) for f in files for name in _imports(f) if _untrusted_layer(name)]
    assert bad == []


def test_enclave_tree_imports_only_allowlisted_distributions() -> None:
    assert len(_enclave_tree(PKG)) > 10
    assert _violations(PKG) == []


def _probe_package(tmp_path: Path, source: str) -> Path:
    """A package ``cipherloop`` under ``tmp_path`` whose enclave holds one module of ``source``."""
    pkg = tmp_path / "cipherloop"
    (pkg / "enclave").mkdir(parents=True)
    (pkg / "ckks").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("import hashlib\n")
    (pkg / "enclave" / "probe.py").write_text(source)
    return pkg


@pytest.mark.parametrize("source", [
    "from ..learn import refine\n",
    "from .. import cloud\n",
    "from cipherloop import client\n",
    "def lazy():\n    import cipherloop.attest.verify\n",
])
def test_boundary_check_would_catch_an_untrusted_layer(tmp_path: Path, source: str) -> None:
    pkg = _probe_package(tmp_path, source)
    names = _imports(pkg / "enclave" / "probe.py", tmp_path)
    assert any(_untrusted_layer(n) for n in names), names
    assert _violations(pkg) != []


@pytest.mark.parametrize(("source", "why"), [
    ("import httpx\n", "not on the allowlist"),
    ("from sklearn.linear_model import LogisticRegression\n", "not on the allowlist"),
    ("import not_a_real_module_anywhere\n", "no installed distribution"),
    ("from ..cloud.db import Base\n", "outside the enclave's tree"),
])
def test_allowlist_check_would_catch_a_foreign_import(tmp_path: Path, source: str, why: str) -> None:
    pkg = _probe_package(tmp_path, source)
    bad = _violations(pkg)
    assert bad and all(f == "enclave/probe.py" for f, _, _ in bad)
    assert why in bad[0][2]


def test_allowlist_check_accepts_what_the_enclave_may_import(tmp_path: Path) -> None:
    pkg = _probe_package(tmp_path, "import os, json\nimport numpy as np\nimport tenseal.sealapi\n"
                                   "from cryptography.hazmat.primitives import hashes\nimport cbor2\n"
                                   "from ..ckks import SecretContext\nfrom ..errors import ShapeError\n"
                                   "from . import api\n")
    assert _violations(pkg) == []


def test_ckks_imports_only_itself_and_errors() -> None:
    for f in sorted((PKG / "ckks").rglob("*.py")):
        for name in _imports(f):
            if name.startswith("cipherloop."):
                assert name.startswith(("cipherloop.ckks", "cipherloop.errors")), (f.name, name)


def test_owner_sdk_imports_nothing_of_the_cloud_service() -> None:
    # The owner builds upload bodies with cipherloop.learn.wire; the service is the other side.
    files = sorted((PKG / "client").rglob("*.py"))
    assert files
    bad = [(f.name, name) for f in files for name in _imports(f)
           if name == "cipherloop.cloud" or name.startswith("cipherloop.cloud.")]
    assert bad == []

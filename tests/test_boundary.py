"""The trust boundary is visible in the imports: enclave code imports no untrusted layer."""

from __future__ import annotations

import ast
from pathlib import Path

import cipherloop

PKG = Path(cipherloop.__file__).parent
FORBIDDEN = ("cloud", "client", "learn", "attest")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


def test_enclave_imports_no_untrusted_layer() -> None:
    files = sorted((PKG / "enclave").rglob("*.py"))
    assert files
    bad = [
        (f.name, name)
        for f in files
        for name in _imports(f)
        if any(name == f"cipherloop.{m}" or name.startswith(f"cipherloop.{m}.") for m in FORBIDDEN)
    ]
    assert bad == []


def test_boundary_check_would_catch_a_violation(tmp_path: Path) -> None:
    fake = PKG / "enclave" / "_probe_violation.py"
    fake.write_text("from ..learn import refine\n")
    try:
        assert "cipherloop.learn" in _imports(fake)
    finally:
        fake.unlink()


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

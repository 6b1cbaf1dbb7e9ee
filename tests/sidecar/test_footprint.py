"""The sidecar runs in every GPU pod: its process must not load the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "flask",
    "werkzeug",
    "sqlalchemy",
    "alembic",
    "kubernetes",
    "prometheus_client",
    "grpc",
    "google.protobuf",
    "yaml",
    "cryptography",
    "jwt",
    "psycopg",
    "gunicorn",
)

PROBE = """
import sys
from gpushare import cli
parser = cli.build_parser()  # imports every part's cli, as `gpushare sidecar` does
import sidecar.agent, sidecar.client, sidecar.clock, gpushare.logs, sidecar.nvml
import sidecar.settings, sidecar.signals, sidecar.spool, sidecar.tokens
heavy = sorted(m for m in sys.modules if m.split('.')[0] in %r or m in %r)
print(','.join(heavy))
"""


def test_gpushare_sidecar_imports_no_framework_orm_or_cluster_client() -> None:
    roots = {name.split(".")[0] for name in HEAVY}
    result = subprocess.run(
        [sys.executable, "-c", PROBE % (roots, set(HEAVY))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == ""

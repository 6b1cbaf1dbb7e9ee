"""The Dockerfile: the same build commands as `make build`, the paths the chart expects.

No container engine runs here, so the image itself is never built by the tests. What is
checked: the make targets and stamp the Dockerfile relies on exist as it assumes, the
files it copies are what those targets produce (`make test` has just built them), the hook
lands where the DaemonSet copies it from, the wheel it installs holds the generated code and
the migrations and works on its own, and its entry point is a command the CLI accepts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from nodemanager import manager as nodemanager_manager

from gpushare.cli import build_parser
from tests.deployment import chart

DOCKERFILE = chart.ROOT / "Dockerfile"
MAKEFILE = chart.ROOT / "Makefile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions by stage name (the last, unnamed stage is "final")."""
    result: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in instructions():
        if word == "FROM":
            name = rest.split(" AS ")[1].strip() if " AS " in rest else "final"
            current = result.setdefault(name, [])
        current.append((word, rest))
    return result


def make_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*[:?]?=\s*(.+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, f"Makefile defines no {name}"
    return match.group(1).strip()


def make_prerequisites(target: str) -> list[str]:
    match = re.search(rf"^{target}:([^=\n]*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, f"Makefile has no target {target}"
    return match.group(1).split()


def dev_requirement(package: str) -> str:
    project = tomllib.loads((chart.ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["dev"]:
        if re.match(rf"{re.escape(package)}\b", requirement):
            return str(requirement)
    raise AssertionError(f"pyproject.toml has no dev requirement {package}")


@pytest.mark.parametrize(
    ("stage", "target", "generator"),
    [
        pytest.param("hook", "hook", "nvidia-cuda-runtime", id="hook-stage"),
        pytest.param("wheel", "proto", "grpcio-tools", id="wheel-stage"),
    ],
)
def test_build_stages_run_the_make_targets_of_make_build(
    stage: str, target: str, generator: str
) -> None:
    """A stage builds with `make TARGET` after a light venv marked by the `make venv` stamp."""
    assert target in make_prerequisites("build")
    assert "venv" in make_prerequisites(target)
    runs = [rest for word, rest in stages()[stage] if word == "RUN"]
    assert f"make {target}" in runs
    venv = make_variable("VENV").split("?=")[-1].strip()
    stamp = make_variable("STAMP").replace("$(VENV)", venv)
    assert make_variable("STAMP") == "$(VENV)/.installed"
    setup = next(run for run in runs if "-m venv" in run)
    assert f"-m venv {venv} " in setup
    assert f'pip install --quiet "{dev_requirement(generator)}"' in setup
    assert setup.endswith(f"touch {stamp}"), "the stamp must be written last"
    assert runs.index(setup) < runs.index(f"make {target}")


def test_hook_stage_copies_what_make_hook_builds() -> None:
    name = nodemanager_manager.HOOK_LIBRARY_NAME
    hook_makefile = (chart.ROOT / "vgpu-runtime" / "hook" / "Makefile").read_text()
    assert f"$(BUILD)/{name}:" in hook_makefile
    built = chart.ROOT / "vgpu-runtime" / "hook" / "build" / name
    assert built.is_file(), "make build (run by make test before the tests) builds the hook"
    copies = [rest for word, rest in stages()["final"] if word == "COPY"]
    source = f"/src/vgpu-runtime/hook/build/{name}"
    destination = chart.load_values()["nodemanager"]["hookLibraryImagePath"]
    assert f"--from=hook {source} {destination}" in copies
    workdir = [rest for word, rest in stages()["hook"] if word == "WORKDIR"]
    assert workdir == ["/src"]


def test_hook_stage_builds_for_old_c_libraries() -> None:
    """The hook is preloaded into users' images: build it against glibc 2.17 (manylinux2014)."""
    base = stages()["hook"][0][1]
    assert base.startswith("quay.io/pypa/manylinux2014_")
    wheel = chart.ROOT / ".venv" / "lib"
    tags = [
        line.split(":", 1)[1].strip()
        for metadata in wheel.glob("python3*/site-packages/nvidia_cuda_runtime-*.dist-info/WHEEL")
        for line in metadata.read_text().splitlines()
        if line.startswith("Tag:")
    ]
    assert any("manylinux2014" in tag or "manylinux_2_17" in tag for tag in tags), tags


def test_final_stage_runs_as_the_chart_non_root_user() -> None:
    final = stages()["final"]
    users = [rest for word, rest in final if word == "USER"]
    assert users == ["65532:65532"]
    values = chart.load_values()
    assert values["sidecar"]["runAsUser"] == 65532
    for template in ("webhook.yaml", "timekeeper-deployment.yaml"):
        assert "runAsUser: 65532" in (chart.TEMPLATES / template).read_text()


def test_entrypoint_and_default_command_parse() -> None:
    final = dict(stages()["final"])
    entrypoint = json.loads(final["ENTRYPOINT"])
    command = json.loads(final["CMD"])
    assert entrypoint == ["gpushare"]
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(command)
    assert command == ["--help"] and exit_info.value.code == 0


def test_dockerignore_keeps_build_outputs_out_and_sources_in() -> None:
    ignored = {
        line.strip()
        for line in (chart.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for path in (".venv", "vgpu-runtime/hook/build", "vgpu-runtime/nodemanager/api/*_pb2*.py"):
        assert path in ignored
    packages = tomllib.loads((chart.ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = {"Makefile", "pyproject.toml", "README.md", *packages["package-dir"].values()}
    needed.update(p for p in packages["packages"] if "." not in p and p != "nodemanager")
    assert not needed & ignored


def test_wheel_holds_generated_code_and_migrations_and_runs_alone(tmp_path: Path) -> None:
    """What the image installs: built from a clean copy of the sources, used without them."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "*.egg-info", ".*cache", "tests", ".run"
    )
    shutil.copytree(chart.ROOT, source, ignore=ignore)
    # The generated modules come along: `make proto` made them before the tests ran.
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("gpushare_k8s-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "nodemanager/api/deviceplugin_pb2.py",
        "nodemanager/api/deviceplugin_pb2_grpc.py",
        "nodemanager/api/podresources_pb2_grpc.py",
        "migrations/env.py",
        "migrations/script.py.mako",
    ):
        assert expected in names
    assert any(re.fullmatch(r"migrations/versions/\w+\.py", n) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    environ = {**os.environ, "PYTHONPATH": str(site)}
    database = tmp_path / "ledger.db"
    script = (
        "import nodemanager.api.deviceplugin_pb2_grpc, gpushare.cli, sys;"
        f"assert nodemanager.api.__file__.startswith({str(site)!r});"
        f"sys.exit(gpushare.cli.main(['db', 'upgrade', '--database-url', 'sqlite:///{database}']))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert "at revision" in ran.stdout


def test_webhook_default_sidecar_image_is_the_chart_image() -> None:
    from webhook.settings import Settings

    values = chart.load_values()
    meta = (chart.CHART / "Chart.yaml").read_text()
    app_version = re.search(r'^appVersion: "([^"]+)"$', meta, re.MULTILINE)
    assert app_version is not None
    expected = f"{values['image']['repository']}:{app_version.group(1)}"
    assert Settings().sidecar_image == expected

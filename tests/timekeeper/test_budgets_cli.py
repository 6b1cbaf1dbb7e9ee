"""`gpushare budgets check FILE`: exit codes and full output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpushare import cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "code", "out", "err"),
    [
        pytest.param(
            "defaults:\n  period: month\n  timezone: Europe/Berlin\n  gpuHours: 100\n"
            "  warnAtPercent: 80\n  whenExhausted: deprioritize\n"
            "namespaces:\n  team-a: {gpuHours: 500}\n"
            "  interns: {gpuHours: 10, whenExhausted: deny}\n"
            "  research: {gpuHours: unlimited}\n"
            "  ml: {period: 'rolling:7d', gpuHours: 12.5, warnAtPercent: 100}\n",
            0,
            "defaults: 100 GPU-hours per month (Europe/Berlin), warning at 80%, then deprioritize\n"
            "interns: 10 GPU-hours per month (Europe/Berlin), warning at 80%, then deny\n"
            "ml: 12.5 GPU-hours over the last 7 days, no warning, then deprioritize\n"
            "research: unlimited GPU-hours per month (Europe/Berlin)\n"
            "team-a: 500 GPU-hours per month (Europe/Berlin), warning at 80%, then deprioritize\n"
            "{path}: valid, 4 namespaces listed\n",
            "",
            id="valid",
        ),
        pytest.param(
            "",
            0,
            "defaults: unlimited GPU-hours per month (UTC)\n{path}: valid, 0 namespaces listed\n",
            "",
            id="empty-file",
        ),
        pytest.param(
            "namespaces:\n  team-a: {gpuHours: 1.5, period: day}\n",
            0,
            "defaults: unlimited GPU-hours per month (UTC)\n"
            "team-a: 1.5 GPU-hours per day (UTC), warning at 80%, then deprioritize\n"
            "{path}: valid, 1 namespace listed\n",
            "",
            id="one-namespace",
        ),
        pytest.param(
            "defaults: {gpuHours: 10, maxVcudaCore: 400}\n"
            "namespaces:\n  big: {maxVcudaMemory: 64, maxVcudaCore: unlimited}\n",
            0,
            "defaults: 10 GPU-hours per month (UTC), warning at 80%, then deprioritize; at most "
            "vcuda-core 400 held at once\n"
            "big: 10 GPU-hours per month (UTC), warning at 80%, then deprioritize; at most "
            "vcuda-memory 64 held at once\n"
            "{path}: valid, 1 namespace listed\n",
            "",
            id="concurrent-caps",
        ),
        pytest.param(
            "defaults:\n  gpuHour: 10\nnamespaces:\n  interns: {gpuHours: ten}\n  interns: {}\n",
            1,
            "",
            "{path}:2: defaults.gpuHour: unknown key; did you mean 'gpuHours'?\n"
            "{path}:4: namespaces.interns.gpuHours: must be a number >= 0 or 'unlimited' "
            "(got 'ten')\n"
            "{path}:5: namespaces.interns: duplicate key (first on line 4, again on line 5)\n"
            "{path}: invalid, 3 problems\n",
            id="every-problem-with-line-and-path",
        ),
        pytest.param(
            "[",
            1,
            "",
            "{path}:1: (file): not valid YAML: expected the node content, but found "
            "'<stream end>' at line 1, column 2\n"
            "{path}: invalid, 1 problem\n",
            id="not-yaml",
        ),
    ],
)
def test_budgets_check(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    code: int,
    out: str,
    err: str,
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["budgets", "check", str(path)]) == code
    captured = capsys.readouterr()
    assert captured.out == out.format(path=path)
    assert captured.err == err.format(path=path)


def test_budgets_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert cli.main(["budgets", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{path}: (file): cannot read {path}: No such file or directory\n"
        f"{path}: invalid, 1 problem\n"
    )


def test_budgets_needs_an_action(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["budgets"])
    assert exit_info.value.code == 2
    assert "budgets" in capsys.readouterr().err


def test_example_file_passes_through_the_real_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpushare", "budgets", "check", "deployment/examples/budgets.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("deployment/examples/budgets.yaml: valid, 5 namespaces listed\n")


def test_budgets_check_reads_standard_input() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpushare", "budgets", "check", "-"],
        cwd=REPO,
        input="namespaces:\n  interns: {gpuHours: ten}\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "-:2: namespaces.interns.gpuHours: must be a number >= 0 or 'unlimited' (got 'ten')\n"
        "-: invalid, 1 problem\n"
    )

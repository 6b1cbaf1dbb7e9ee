import pytest

from gpushare import cli
from gpushare.resources import is_valid_core_units


def test_version_prints_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("gpushare ")


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("units", "valid"),
    [
        pytest.param(1, True, id="core-1-shared"),
        pytest.param(99, True, id="core-99-shared"),
        pytest.param(100, True, id="core-100-whole"),
        pytest.param(300, True, id="core-300-three-gpus"),
        pytest.param(0, False, id="core-0-rejected"),
        pytest.param(-5, False, id="core-negative-rejected"),
        pytest.param(150, False, id="core-150-rejected"),
    ],
)
def test_core_units_rule(units: int, valid: bool) -> None:
    assert is_valid_core_units(units) is valid

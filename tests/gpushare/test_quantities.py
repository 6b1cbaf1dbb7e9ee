from decimal import Decimal

import pytest

from gpushare import quantities


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("50", Decimal(50), id="plain"),
        pytest.param(50, Decimal(50), id="json-number"),
        pytest.param("1k", Decimal(1000), id="canonical-thousand"),
        pytest.param("2M", Decimal(2_000_000), id="canonical-million"),
        pytest.param("1e2", Decimal(100), id="exponent"),
        pytest.param("1E2", Decimal(100), id="exponent-upper-case"),
        pytest.param("100E", Decimal(100 * 10**18), id="exa-as-the-api-server-writes-1e20"),
        pytest.param("500m", Decimal("0.5"), id="milli"),
        pytest.param("2Gi", Decimal(2 * 2**30), id="binary-suffix"),
        pytest.param(" 15 ", Decimal(15), id="surrounding-space"),
    ],
)
def test_parse(value: object, expected: Decimal) -> None:
    assert quantities.parse(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("0.5", "it must be a whole number", id="fraction"),
        pytest.param("500m", "it must be a whole number", id="milli-fraction"),
        pytest.param("-5", "it must not be negative", id="negative"),
        pytest.param("fifty", "it is not a valid quantity", id="word"),
        pytest.param("٥٠", "it is not a valid quantity", id="non-ascii-digits"),
        pytest.param("1" * 40, "it is not a valid quantity", id="absurdly-long"),
        pytest.param(True, "it must be a quantity such as 50", id="boolean"),
        pytest.param(None, "it must be a quantity such as 50", id="null"),
    ],
)
def test_parse_whole_refuses(value: object, reason: str) -> None:
    with pytest.raises(quantities.QuantityError) as error:
        quantities.parse_whole(value)
    assert str(error.value) == reason


@pytest.mark.parametrize(
    ("value", "binary"),
    [
        pytest.param("16Gi", True, id="gibibytes"),
        pytest.param("16G", False, id="decimal-giga"),
        pytest.param(16, False, id="number"),
    ],
)
def test_has_binary_suffix(value: object, binary: bool) -> None:
    assert quantities.has_binary_suffix(value) is binary

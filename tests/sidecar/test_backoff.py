from __future__ import annotations

import pytest

from sidecar.backoff import Backoff

SCHEDULE = Backoff(initial_seconds=1.0, max_seconds=60.0)


@pytest.mark.parametrize(
    ("failures", "draw", "delay"),
    [
        pytest.param(1, 0.0, 0.5, id="first-failure-lowest-draw"),
        pytest.param(1, 0.999999, 0.9999995, id="first-failure-highest-draw"),
        pytest.param(2, 0.5, 1.5, id="second-doubles"),
        pytest.param(4, 1.0, 8.0, id="fourth-8s-ceiling"),
        pytest.param(7, 0.0, 30.0, id="seventh-capped-floor"),
        pytest.param(7, 1.0, 60.0, id="seventh-capped-ceiling"),
        pytest.param(10_000, 0.5, 45.0, id="huge-count-no-overflow"),
        pytest.param(0, 1.0, 1.0, id="zero-treated-as-first"),
        pytest.param(3, 7.0, 4.0, id="draw-clamped-high"),
        pytest.param(3, -1.0, 2.0, id="draw-clamped-low"),
    ],
)
def test_delay_is_jittered_in_the_upper_half_of_a_capped_doubling(
    failures: int, draw: float, delay: float
) -> None:
    assert SCHEDULE.delay_seconds(failures, draw) == pytest.approx(delay)


def test_the_ceiling_never_passes_the_cap() -> None:
    ceilings = [SCHEDULE.ceiling_seconds(n) for n in range(1, 12)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60]

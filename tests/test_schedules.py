import math

import pytest

from ssl_lessons.schedules import cosine_schedule


pytestmark = pytest.mark.numerics  # also run with other kernels and threads (make test)


def test_cosine_hits_start_and_end():
    assert cosine_schedule(0.0, 1.0, 0.1) == 1.0
    assert math.isclose(cosine_schedule(1.0, 1.0, 0.1), 0.1)
    assert math.isclose(cosine_schedule(0.5, 1.0, 0.0), 0.5)  # half way down a half cosine


def test_warmup_is_linear_then_cosine_from_the_peak():
    assert cosine_schedule(0.0, 2.0, 0.0, warmup=0.1) == 0.0
    assert math.isclose(cosine_schedule(0.05, 2.0, 0.0, warmup=0.1), 1.0)
    assert math.isclose(cosine_schedule(0.1, 2.0, 0.0, warmup=0.1), 2.0)
    assert math.isclose(cosine_schedule(1.0, 2.0, 0.0, warmup=0.1), 0.0, abs_tol=1e-12)


def test_monotone_after_warmup_and_clamped_outside_0_1():
    values = [cosine_schedule(p / 100, 1.0, 0.0, warmup=0.2) for p in range(20, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert cosine_schedule(-0.5, 1.0, 0.3) == 1.0 and math.isclose(cosine_schedule(1.5, 1.0, 0.3), 0.3)


def test_increasing_schedule_for_weight_decay():
    assert math.isclose(cosine_schedule(0.0, 0.04, 0.4), 0.04) and math.isclose(cosine_schedule(1.0, 0.04, 0.4), 0.4)

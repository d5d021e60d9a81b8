import math

import numpy as np
import pytest

from latkit.collector import summarize
from latkit.collector.measurement import Stats


def test_known_samples():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.latency_ms == 3.0 == s.median_ms and s.mean_ms == 3.0 and s.min_ms == 1.0 and s.max_ms == 5.0
    assert s.std_ms == pytest.approx(math.sqrt(2.5))          # sample std (ddof=1)
    assert s.p10_ms == pytest.approx(1.4) and s.p90_ms == pytest.approx(4.6)  # linear interpolation
    assert s.p99_ms == pytest.approx(4.96) and s.iqr_ms == pytest.approx(2.0)
    assert s.cv == pytest.approx(math.sqrt(2.5) / 3.0) and s.repeats == 5
    assert s.robust_cv == pytest.approx(2.0 / 1.349 / 3.0)


def test_median_is_robust_to_a_preempted_sample():
    s = summarize([2.0] * 99 + [200.0])
    assert s.latency_ms == 2.0 and s.mean_ms == pytest.approx(3.98)


def test_shortest_half_mode():
    # the bulk sits at 1.0-1.1; a slow tail of a third of the samples does not move it
    x = [1.0, 1.02, 1.04, 1.06, 1.08, 1.1, 3.0, 4.0, 5.0]
    assert Stats.of(x).mode_ms == pytest.approx((1.0 + 1.08) / 2)


def test_rounds_take_the_fastest_round_median():
    s = Stats.of([1.0, 1.1, 1.2, 2.0, 2.1, 2.2], round_medians=[1.1, 2.1])
    assert s.latency_ms == 1.1 and s.median_ms == pytest.approx(1.6)


def test_single_and_empty():
    assert summarize([7.5]).std_ms == 0.0
    with pytest.raises(ValueError):
        summarize(np.array([]))

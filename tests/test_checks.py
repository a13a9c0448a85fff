"""The one-sum input checks answer as the element-by-element ones, including where the sum misleads."""

import math

import pytest
import torch

from ngp.ops.checks import all_finite, has_nan

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("values", [
    [],
    [0.25, -3.0, 7.5],
    [1.0, NAN, 2.0],
    [INF, 1.0],
    [-INF, 1.0],
    [INF, -INF, 0.0],           # the sum is NaN, yet no element is
    [3e38, 3e38, -1.0],         # finite values whose sum overflows (in every dtype here)
    [65000.0, 65000.0],         # float16's sum overflows
    [NAN, INF],
])
def test_sum_checks_answer_as_elementwise_checks(values, dtype):
    x = torch.tensor(values, dtype=torch.float64).to(dtype).reshape(-1, 1).expand(-1, 3)
    assert has_nan(x) == bool(torch.isnan(x).any())
    assert all_finite(x) == bool(torch.isfinite(x).all())


def test_a_nan_among_many_is_found():
    x = torch.rand(100_000, 3)
    assert not has_nan(x) and all_finite(x)
    x[77_777, 2] = NAN
    assert has_nan(x) and not all_finite(x)

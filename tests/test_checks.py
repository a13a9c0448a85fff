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


# ----------------------------------------------------------------------------------------------------
# Gradients proved finite by their kernel: the note on the parameter, and the training's guard
# ----------------------------------------------------------------------------------------------------

from ngp.encodings.grid import HashGrid
from ngp.ops.checks import gradient_noted_finite, note_finite_gradient
from ngp.train.precision import gradients_finite

SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
              "base_resolution": 4, "per_level_scale": 2.0}


def test_a_note_names_one_gradient_and_is_used_once():
    param = torch.nn.Parameter(torch.zeros(4, 2))
    param.grad = torch.ones(4, 2)
    note_finite_gradient(param, param.grad)
    assert gradient_noted_finite(param)
    assert not gradient_noted_finite(param)  # used up
    note_finite_gradient(param, param.grad)
    param.grad.mul_(2.0)  # an in-place write after the note
    assert not gradient_noted_finite(param)
    note_finite_gradient(param, param.grad)
    param.grad = torch.ones(4, 2)  # another tensor
    assert not gradient_noted_finite(param)
    note_finite_gradient(param, param.grad)
    note_finite_gradient(param, None)  # withdrawn
    assert not gradient_noted_finite(param)


def _grid_gradient(scale: float):
    grid = HashGrid(3, SMALL_GRID)
    x = torch.rand(100, 3, generator=torch.Generator().manual_seed(0))
    weights = torch.full((100, grid.n_output_dims), scale)
    (grid(x) * weights).sum().backward()
    return grid, torch.optim.SGD(grid.parameters(), lr=0.1)


def test_the_hash_grid_notes_its_table_gradient_finite_and_the_guard_trusts_it(monkeypatch):
    grid, optimizer = _grid_gradient(1.0)
    assert torch.isfinite(grid.table.grad).all()
    read = []
    monkeypatch.setattr(torch.Tensor, "sum", lambda self, *a, **k: read.append(self) or torch.zeros(()))
    assert gradients_finite(optimizer) and not read  # the table gradient was not read


def test_the_guard_reads_a_table_gradient_nobody_proved_finite():
    """A NaN in the features' gradient, or an in-place write after the backward, leaves the guard to read
    the table's gradient (and find it non-finite)."""
    grid, optimizer = _grid_gradient(math.nan)
    assert not gradient_noted_finite(grid.table) and not gradients_finite(optimizer)
    grid, optimizer = _grid_gradient(1.0)
    grid.table.grad[0, 0] = math.inf
    assert not gradients_finite(optimizer)


@pytest.mark.parametrize("scale,noted", [(1e30, True), (1e37, False)])
def test_the_bound_must_stay_below_the_largest_float(scale, noted):
    """100 points whose features' gradients reach 1e37 could sum beyond float32's 3.4e38: no note."""
    grid, _ = _grid_gradient(scale)
    assert gradient_noted_finite(grid.table) == noted


def test_no_note_for_points_that_are_not_finite():
    """The bound needs finite points (a NaN coordinate may give NaN weights): the op called directly
    with one notes nothing."""
    from ngp.ops.hashgrid import hash_grid_encode

    grid = HashGrid(3, SMALL_GRID)
    x = torch.rand(50, 3)
    x[7, 1] = math.nan
    hash_grid_encode(x, grid.table, grid.layout).sum().backward()
    assert not gradient_noted_finite(grid.table)
    hash_grid_encode(x.nan_to_num(0.5), grid.table, grid.layout).sum().backward()
    assert not gradient_noted_finite(grid.table)  # accumulated into the first gradient: changed in place
    grid.table.grad = None
    hash_grid_encode(x.nan_to_num(0.5), grid.table, grid.layout).sum().backward()
    assert gradient_noted_finite(grid.table)

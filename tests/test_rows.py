"""ngp.ops.rows: the gather-and-join kernel against its plain definition."""

import pytest
import torch

from ngp.kernels.reference import rows as reference
from ngp.ops.rows import gather_cat


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int64])
def test_gather_cat_is_the_indexing_and_cat(dtype):
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(37, 16, generator=g) * 100).to(dtype)
    b = (torch.randn(301, 8, generator=g) * 100).to(dtype)
    a_index = torch.randint(0, 37, (5000,), generator=g)
    b_index = torch.randint(0, 301, (5000,), generator=g)
    out = gather_cat(a, a_index, b, b_index)
    assert out.dtype == dtype and torch.equal(out, torch.cat([a[a_index], b[b_index]], dim=1))


def test_gather_cat_takes_the_reference_where_the_kernel_cannot():
    a, b = torch.randn(5, 3), torch.randn(4, 2)  # 12- and 8-byte rows: not whole words
    index = torch.tensor([0, 3, 3])
    assert torch.equal(gather_cat(a, index, b, index), torch.cat([a[index], b[index]], 1))
    a16, b16 = torch.randn(5, 4, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    gather_cat(a16, index, b16, index).sum().backward()  # with gradients: the reference, through autograd
    assert torch.equal(a16.grad, torch.zeros(5, 4).index_add(0, index, torch.ones(3, 4)))
    assert gather_cat(a16.detach(), index[:0], b16.detach(), index[:0]).shape == (0, 6)


def test_gather_cat_rejects_bad_input():
    a, b, index = torch.randn(5, 4), torch.randn(4, 2), torch.tensor([0, 1])
    with pytest.raises(IndexError, match="b_index holds rows 0..4 outside 0..3"):
        gather_cat(a, index, b, torch.tensor([0, 4]))
    with pytest.raises(IndexError, match="a_index holds rows -1..1"):
        gather_cat(a, torch.tensor([-1, 1]), b, index)
    with pytest.raises(ValueError, match="one dtype"):
        gather_cat(a, index, b.double(), index)
    with pytest.raises(ValueError, match="int64"):
        gather_cat(a, index.int(), b, index)
    with pytest.raises(ValueError, match="must match"):
        gather_cat(a, index, b, index[:1])
    with pytest.raises(ValueError, match="table"):
        gather_cat(a[0], index, b, index)


def test_reference_is_the_definition():
    a, b = torch.arange(6.0).reshape(3, 2), torch.arange(4.0).reshape(2, 2) + 10
    assert reference.gather_cat(a, torch.tensor([2, 0]), b, torch.tensor([1, 1])).tolist() == \
        [[4.0, 5.0, 12.0, 13.0], [0.0, 1.0, 12.0, 13.0]]

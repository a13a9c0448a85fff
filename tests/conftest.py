"""Fixtures shared by test folders."""

import pytest


@pytest.fixture(scope="module")
def triton_interpreter():
    """``TRITON_INTERPRET=1`` for one test module, restored afterwards: CPU tensors then run the Triton
    kernels in Triton's interpreter (see :func:`ngp.kernels.triton.kernels_for_mode`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        yield

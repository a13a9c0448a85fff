"""LLVM intrinsics for the Numba kernels that Numba does not expose.

``prefetch_read(array, row)`` asks the CPU to start loading the cache line of ``array[row, 0]`` (a 2-D
C-contiguous array) ahead of use: ``llvm.prefetch``, which becomes ``prefetcht0`` on x86-64 and ``prfm``
on AArch64 (nothing where the target has no prefetch instruction).
A prefetch never faults and changes no value, so a kernel that uses them computes the same numbers.

``float32_bits(value)`` is the ``uint32`` bit pattern of a float32 (a bit cast, as NumPy's
``.view(np.uint32)`` on arrays): the kernels that write bfloat16 round with it
(:func:`ngp.kernels.cpu.hashgrid.bfloat16_bits`).

Why: the hash encoding's table reads are random, one cache miss each; a kernel that first computes the
rows of a block of points and prefetches them, then reads them, keeps many misses in flight at once
where a point-by-point loop waits for each point's corners in turn (measured in
:mod:`ngp.kernels.cpu.hashgrid`). A scatter-add prefetched for writing measured slower, so there is no
``prefetch_write``.

Example::

    >>> @njit
    ... def gather(table, rows, out):
    ...     for i in range(rows.shape[0]):
    ...         prefetch_read(table, rows[i])
    ...     for i in range(rows.shape[0]):
    ...         out[i] = table[rows[i], 0]
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["prefetch_read", "float32_bits"]


@intrinsic
def prefetch_read(typingctx, array, row):
    if not (isinstance(array, types.Array) and array.ndim == 2 and isinstance(row, types.Integer)):
        return None
    signature = types.void(array, row)

    def codegen(context, builder, sig, args):
        array_type, row_type = sig.args
        data = context.make_array(array_type)(context, builder, args[0])
        row_index = context.cast(builder, args[1], row_type, types.intp)
        pointer = cgutils.get_item_pointer(context, builder, array_type, data,
                                           [row_index, context.get_constant(types.intp, 0)], wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0i8")
        # (address, read 0 / write 1, locality 3 = keep in all cache levels, data cache 1)
        builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen


@intrinsic
def float32_bits(typingctx, value):
    if value != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(value), codegen

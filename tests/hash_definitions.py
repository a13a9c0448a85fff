"""tiny-cuda-nn's grid hash functions written out in plain Python integers, independently of ``ngp``.

From tiny-cuda-nn's ``grid.h``/``common_device.h`` (read for the definitions, not copied): every hash
maps an integer vertex (uint32 per axis) to a uint32; the table row is that ``mod T``.
The ``Rng`` hash's PCG32 jump-ahead is done here by composing the affine step map ``s -> a s + c``
with itself (exponentiation by squaring of the pair), and :func:`pcg32_after` also by plain stepping
for small step counts, so the two can check each other.
"""

from __future__ import annotations

M32, M64 = 2**32 - 1, 2**64 - 1
FACTORS = {  # seven factors each, as tiny-cuda-nn lists them
    "Prime": (1958374283, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737),
    "CoherentPrime": (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737),
    "ReversedPrime": (2165219737, 1434869437, 2097192037, 3674653429, 805459861, 2654435761, 1958374283),
}
PCG_MULTIPLIER = 0x5851F42D4C957F2D
HASHES = ("CoherentPrime", "Prime", "ReversedPrime", "BaseConvert", "Rng")


def _pcg_output(state: int) -> int:
    xorshifted = (((state >> 18) ^ state) >> 27) & M32
    rot = state >> 59
    return ((xorshifted >> rot) | (xorshifted << ((-rot) & 31))) & M32


def _compose(first: tuple[int, int], second: tuple[int, int]) -> tuple[int, int]:
    """The affine map ``second(first(s))`` of two maps ``s -> a s + c`` (mod 2^64)."""
    (a1, c1), (a2, c2) = first, second
    return (a2 * a1) & M64, (a2 * c1 + c2) & M64


def _seeded(seed: int, stream: int) -> tuple[int, int]:
    """(state, increment) of PCG32 right after ``seed(seed, stream)``."""
    inc = ((stream << 1) | 1) & M64
    state = inc  # one step from state 0
    state = (state + seed) & M64
    state = (state * PCG_MULTIPLIER + inc) & M64
    return state, inc


def pcg32_after(steps: int, seed: int = 1337, stream: int = 1, naive: bool = False) -> int:
    """The 32-bit output of PCG32 (seeded with ``seed`` on ``stream``) after skipping ``steps`` outputs."""
    state, inc = _seeded(seed, stream)
    if naive:
        for _ in range(steps):
            state = (state * PCG_MULTIPLIER + inc) & M64
        return _pcg_output(state)
    total, power = (1, 0), (PCG_MULTIPLIER, inc)
    while steps:
        if steps & 1:
            total = _compose(total, power)
        power = _compose(power, power)
        steps >>= 1
    a, c = total
    return _pcg_output((a * state + c) & M64)


def tcnn_hash(cell: tuple[int, ...], name: str) -> int:
    """tiny-cuda-nn's hash ``name`` of an integer vertex ``cell`` (before ``mod T``)."""
    if name in FACTORS:
        h = 0
        for c, factor in zip(cell, FACTORS[name]):
            h ^= (c * factor) & M32
        return h
    if name == "BaseConvert":
        k = 0
        for c in cell:
            k = ((k + c) * 2531011) & M32
        return k
    if name == "Rng":
        bits = 64 // len(cell)
        step = 0
        for i, c in enumerate(cell):
            step ^= (c << (i * bits)) & M64
        return pcg32_after(step)
    raise ValueError(name)

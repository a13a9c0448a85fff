"""Plain-PyTorch definition of the multiresolution hash encoding.

This file is the *specification*: every compiled kernel (Numba on the CPU, Triton on the GPU) is
tested against it. It favours clarity over speed and is fully differentiable by autograd with respect
to both the table and the input coordinates (also twice, for gradcheck and eikonal-style losses).

Conventions (Müller et al. 2022, section 3):

* Level ``l`` has resolution ``N_l = floor(N_min * b**l)``; a point ``x in [0, 1]^d`` is scaled to
  ``x * N_l`` and falls into the cell ``floor(x * N_l)`` (clamped to ``N_l - 1`` so that ``x = 1`` lies
  in the last cell). A level therefore has ``N_l + 1`` vertices per axis.
* Levels with ``(N_l + 1)^d <= T`` index their vertices 1:1 (``sum_i c_i (N_l + 1)^i``); finer levels
  use the spatial hash ``(xor_i c_i * pi_i) mod T`` with ``pi = 1, 2654435761, 805459861, ...``
  computed in 32-bit unsigned arithmetic, exactly as in the paper (tiny-cuda-nn's ``CoherentPrime``).
* Coordinates outside ``[0, 1]`` are clamped to it (their gradient is zero there).

Hash functions (the layout's ``hash_function``, tiny-cuda-nn's ``"hash"`` key and names; all map the
integer vertex ``c`` (uint32 per axis) to a uint32, then ``mod T``):

* ``CoherentPrime`` (default, the paper's): ``xor_i (c_i * P_i mod 2^32)``, ``P = 1, 2654435761, 805459861,
  3674653429``; the first factor 1 keeps neighbours along x in neighbouring rows (cache coherence).
* ``Prime``: the same with ``P_0 = 1958374283``.
* ``ReversedPrime``: ``P = 2165219737, 1434869437, 2097192037, 3674653429``.
* ``BaseConvert``: ``k = 0; for each axis: k = (k + c_i) * 2531011 mod 2^32``.
* ``Rng``: a PCG32 generator seeded with 1337 (stream 1) is advanced by
  ``step = xor_i (c_i << (i * (64 // d)))`` (64-bit) and its next 32-bit output is the hash.

A layout's ``hash_primes`` replace an xor-of-products hash's factors ``P`` (the factors that
:mod:`ngp.encodings.hash_search` searches over; the ``hash_primes`` key of a grid config).

One internal value, ``Tiled`` (set by the ``TiledGrid`` encoding, not a config value): the dense index
``sum_i c_i (N_l + 1)^i`` modulo the level's size, i.e. levels finer than the coarsest reuse its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

#: Hash primes of the paper / tiny-cuda-nn; the first is 1 for better cache coherence.
PRIMES = (1, 2654435761, 805459861, 3674653429)

#: The xor-of-products hashes, by tiny-cuda-nn name: one factor per axis (up to 4 axes here).
HASH_PRIMES = {
    "CoherentPrime": PRIMES,
    "Prime": (1958374283, 2654435761, 805459861, 3674653429),
    "ReversedPrime": (2165219737, 1434869437, 2097192037, 3674653429),
}
#: ``BaseConvert``'s multiplier.
BASE_CONVERT_FACTOR = 2531011
#: ``Rng``'s generator: PCG32 (tiny-cuda-nn's ``default_rng_t``) seeded with 1337 on stream 1.
RNG_SEED = 1337
PCG_MULT = 0x5851F42D4C957F2D
PCG_INC = (1 << 1) | 1  # (stream << 1) | 1, stream 1
#: Hash functions a config may name (tiny-cuda-nn's), then the internal ``Tiled``; the integer is what
#: kernels receive. CoherentPrime is 0: the default, and the only one the fast CPU paths take.
HASH_FUNCTIONS = {"CoherentPrime": 0, "Prime": 1, "ReversedPrime": 2, "BaseConvert": 3, "Rng": 4, "Tiled": 5}
#: The names a config's ``"hash"`` key accepts.
CONFIG_HASHES = ("CoherentPrime", "Prime", "ReversedPrime", "BaseConvert", "Rng")
_MASK64 = (1 << 64) - 1

#: Interpolation kinds, by tiny-cuda-nn name; the integer is what kernels receive.
INTERPOLATIONS = {"Nearest": 0, "Linear": 1, "Smoothstep": 2}

MAX_DIMS = len(PRIMES)


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a multiresolution grid: everything a kernel needs besides the table itself.

    ``offsets[l]:offsets[l+1]`` are the table rows owned by level ``l``; ``hashed[l]`` says whether
    that level uses the spatial hash ``hash_function`` (``True``) or 1:1 indexing.
    """

    n_dims: int
    n_features: int
    resolutions: tuple[int, ...]
    offsets: tuple[int, ...]
    hashed: tuple[bool, ...]
    hash_function: str = "CoherentPrime"
    #: Factors of an xor-of-products hash in place of ``hash_function``'s own (one per axis, each in
    #: ``[1, 2^32)``); empty: the function's. What :mod:`ngp.encodings.hash_search` varies.
    hash_primes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.hash_function not in HASH_FUNCTIONS:
            raise ValueError(f"unknown hash function {self.hash_function!r}; expected one of {list(HASH_FUNCTIONS)}")
        if self.hash_primes:
            check_hash_primes(self.hash_primes, self.n_dims, self.hash_function)

    @property
    def primes(self) -> tuple[int, ...]:
        """The xor-of-products hash's factors, one per axis up to :data:`MAX_DIMS` (``hash_primes`` or
        the hash function's own); empty for the other hash functions."""
        if self.hash_primes:
            return tuple(self.hash_primes) + PRIMES[len(self.hash_primes):]
        return HASH_PRIMES.get(self.hash_function, ())

    @property
    def n_levels(self) -> int:
        return len(self.resolutions)

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features

    @staticmethod
    def create(
        n_dims: int,
        n_levels: int,
        n_features: int,
        log2_hashmap_size: int,
        base_resolution: int,
        per_level_scale: float,
        hash: bool = True,
        hash_function: str = "CoherentPrime",
        tiled: bool = False,
        hash_primes: Sequence[int] = (),
    ) -> "GridLayout":
        """Build the layout of a hash grid (``hash=True``), a dense grid (``hash=False``) or a tiled
        grid (``tiled=True``: a level with more vertices than the coarsest level reuses the coarsest
        level's number of rows, indexed by its dense index modulo that number, as tiny-cuda-nn's
        ``TiledGrid``; ``log2_hashmap_size`` is then unused).

        Example:
            >>> GridLayout.create(2, 3, 2, 4, 2, 2.0).hashed   # (2+1)^2 <= 16 < (4+1)^2
            (False, True, True)
        """
        resolutions = [int(math.floor(base_resolution * per_level_scale**level + 1e-6)) for level in range(n_levels)]
        # (The tiny epsilon keeps e.g. 16 * 2**(log2(128)/...) from rounding down to 127.)
        return GridLayout.from_resolutions(n_dims, n_features, resolutions, log2_hashmap_size, hash, hash_function,
                                           tiled, hash_primes)

    @staticmethod
    def from_resolutions(
        n_dims: int,
        n_features: int,
        resolutions: Sequence[int],
        log2_hashmap_size: int,
        hash: bool = True,
        hash_function: str = "CoherentPrime",
        tiled: bool = False,
        hash_primes: Sequence[int] = (),
    ) -> "GridLayout":
        """The layout of levels with the given ``resolutions`` (cells per axis), each hashed or 1:1 by
        the same rule as :meth:`create` (which computes the resolutions from ``N_min`` and ``b``)."""
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"grid encodings support 1 to {MAX_DIMS} input dimensions, got {n_dims}")
        hashmap_size = 2**log2_hashmap_size
        offsets, hashed = [0], []
        for res in resolutions:
            dense_rows = (res + 1) ** n_dims
            if tiled:
                size = (resolutions[0] + 1) ** n_dims
                is_hashed = dense_rows > size
            else:
                size = hashmap_size
                is_hashed = hash and dense_rows > hashmap_size
            hashed.append(is_hashed)
            offsets.append(offsets[-1] + (size if is_hashed else dense_rows))
        function = "Tiled" if tiled else hash_function
        return GridLayout(n_dims, n_features, tuple(int(r) for r in resolutions), tuple(offsets), tuple(hashed),
                          function, tuple(int(p) for p in hash_primes))

    def level(self, level: int) -> "GridLayout":
        """Level ``level`` alone, as a one-level layout whose rows are ``offsets[level]:offsets[level+1]``."""
        size = self.offsets[level + 1] - self.offsets[level]
        return GridLayout(self.n_dims, self.n_features, (self.resolutions[level],), (0, size), (self.hashed[level],),
                          self.hash_function, self.hash_primes)


def corner_indices(cell: torch.Tensor, level: int, layout: GridLayout) -> torch.Tensor:
    """Table row (within the level) of integer grid vertices ``cell`` ([..., d] int64) -> [...]."""
    res = layout.resolutions[level]
    size = layout.offsets[level + 1] - layout.offsets[level]
    if layout.hashed[level] and layout.hash_function != "Tiled":
        return spatial_hash(cell, size, layout.hash_function, layout.hash_primes)
    index = torch.zeros(cell.shape[:-1], dtype=torch.int64, device=cell.device)
    stride = 1
    for i in range(layout.n_dims):
        index += cell[..., i] * stride
        stride *= res + 1
    return index % size if layout.hashed[level] else index


def check_hash_primes(primes: Sequence[int], n_dims: int, hash_function: str = "CoherentPrime") -> None:
    """Raise ValueError unless ``primes`` can replace ``hash_function``'s factors: an xor-of-products
    hash (:data:`HASH_PRIMES`), at least one factor per axis (at most :data:`MAX_DIMS`), integers in
    ``[1, 2^32)`` (they multiply uint32 coordinates; they need not be prime, but odd ones lose no bits)."""
    if hash_function not in HASH_PRIMES:
        raise ValueError(f"hash primes replace the factors of an xor-of-products hash ({', '.join(HASH_PRIMES)}), "
                         f"not of {hash_function!r}")
    if not n_dims <= len(primes) <= MAX_DIMS:
        raise ValueError(f"expected {n_dims} to {MAX_DIMS} hash primes (one per axis), got {len(primes)}")
    for p in primes:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p < 2**32:
            raise ValueError(f"hash primes must be integers in [1, 2^32), got {p!r}")


def spatial_hash(cell: torch.Tensor, hashmap_size: int, hash_function: str = "CoherentPrime",
                 primes: Sequence[int] = ()) -> torch.Tensor:
    """A spatial hash (see the module doc) of integer vertices ``cell`` ([..., d]) -> [...] in ``[0, T)``.
    ``primes``: factors in place of an xor-of-products ``hash_function``'s own (see :class:`GridLayout`).

    Example:
        >>> spatial_hash(torch.tensor([[1, 1, 1]]), 2**19).item() == (1 ^ 2654435761 ^ 805459861) % 2**19
        True
    """
    cell = cell.long()
    if primes:
        check_hash_primes(primes, cell.shape[-1], hash_function)
    if hash_function in HASH_PRIMES:
        factors = tuple(primes) or HASH_PRIMES[hash_function]
        index = torch.zeros(cell.shape[:-1], dtype=torch.int64, device=cell.device)
        for i in range(cell.shape[-1]):
            index ^= (cell[..., i] * factors[i]) & 0xFFFFFFFF
    elif hash_function == "BaseConvert":
        index = torch.zeros(cell.shape[:-1], dtype=torch.int64, device=cell.device)
        for i in range(cell.shape[-1]):
            index = ((index + cell[..., i]) * BASE_CONVERT_FACTOR) & 0xFFFFFFFF
    elif hash_function == "Rng":
        index = rng_hash(cell)
    else:
        raise ValueError(f"unknown hash function {hash_function!r}; expected one of {CONFIG_HASHES}")
    return index % hashmap_size


# ----------------------------------------------------------------------------------------------------
# Rng: PCG32 arithmetic on int64 tensors holding uint64 bit patterns (products and sums wrap mod 2^64)
# ----------------------------------------------------------------------------------------------------


def _signed64(value: int) -> int:
    """A uint64 as the int64 with the same bits (what an int64 tensor can hold)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(a: torch.Tensor, k: int) -> torch.Tensor:
    """Logical (unsigned) right shift of uint64 bit patterns: ``>>`` on int64 would copy the sign bit."""
    return (a >> k) & ((1 << (64 - k)) - 1) if k else a


def pcg_jump_tables() -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """``(mults, pluses, state0)`` as Python ints (uint64): advancing by ``2^k`` steps maps the state
    ``s`` to ``mults[k] * s + pluses[k]``; ``state0`` is the state right after seeding (PCG32's
    ``seed(1337, 1)``: one step from 0, add the seed, one more step)."""
    mults, pluses = [], []
    mult, plus = PCG_MULT, PCG_INC
    for _ in range(64):
        mults.append(mult)
        pluses.append(plus)
        plus = ((mult + 1) * plus) & _MASK64
        mult = (mult * mult) & _MASK64
    state0 = (((PCG_INC + RNG_SEED) & _MASK64) * PCG_MULT + PCG_INC) & _MASK64
    return tuple(mults), tuple(pluses), state0


def rng_hash(cell: torch.Tensor) -> torch.Tensor:
    """tiny-cuda-nn's ``Rng`` hash of integer vertices ``cell`` ([..., d]) -> [...] uint32 values (int64).

    Example:
        >>> rng_hash(torch.tensor([[5, 0, 3]])).shape
        torch.Size([1])
    """
    d = cell.shape[-1]
    bits = 64 // d
    step = torch.zeros(cell.shape[:-1], dtype=torch.int64, device=cell.device)
    for i in range(d):
        step ^= cell[..., i].long() << (i * bits)  # wraps like uint64 (bits shifted out are dropped)
    mults, pluses, state0 = pcg_jump_tables()
    acc_mult = torch.ones_like(step)
    acc_plus = torch.zeros_like(step)
    for k in range(64):  # the standard PCG jump-ahead: one affine map per set bit of the step
        bit = ((step >> k) & 1).bool()
        acc_mult = torch.where(bit, acc_mult * _signed64(mults[k]), acc_mult)
        acc_plus = torch.where(bit, acc_plus * _signed64(mults[k]) + _signed64(pluses[k]), acc_plus)
    state = acc_mult * _signed64(state0) + acc_plus
    xorshifted = _shift_right(_shift_right(state, 18) ^ state, 27) & 0xFFFFFFFF
    rot = _shift_right(state, 59)
    return ((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & 0xFFFFFFFF


def interpolation_weights(frac: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Per-axis weight of the upper corner, from the position inside the cell (``frac`` in [0, 1])."""
    if interpolation == "Linear":
        return frac
    if interpolation == "Smoothstep":
        return frac * frac * (3.0 - 2.0 * frac)
    if interpolation == "Nearest":
        return (frac >= 0.5).to(frac.dtype)
    raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(INTERPOLATIONS)}")


def corner_offsets(n_dims: int, device=None) -> torch.Tensor:
    """``[2^d, d]`` int64: the offsets of a cell's corners from its lower corner, corner ``c`` having
    bit ``i`` of ``c`` on axis ``i`` (the order of the interpolation weights)."""
    return torch.tensor([[(c >> i) & 1 for i in range(n_dims)] for c in range(2**n_dims)], dtype=torch.int64,
                        device=device)


def lower_corners(pos: torch.Tensor, resolution: int) -> torch.Tensor:
    """``[N, d]`` positions in cells (``x * N_l``, ``x`` in ``[0, 1]``) -> ``[N, d]`` int64 lower corners of
    their cells; ``x = 1`` lies in the last cell, as in every kernel."""
    return torch.floor(pos.detach()).clamp(max=resolution - 1).long()


def hash_grid_encode(
    x: torch.Tensor, table: torch.Tensor, layout: GridLayout, interpolation: str = "Linear"
) -> torch.Tensor:
    """Encode points with a multiresolution (hash) grid.

    Args:
        x: ``[N, d]`` coordinates in ``[0, 1]^d`` (clamped to it).
        table: ``[layout.n_rows, F]`` feature vectors of all levels, stacked.
        layout: the grid's geometry (see :class:`GridLayout`).
        interpolation: ``"Linear"`` (d-linear), ``"Smoothstep"`` or ``"Nearest"``.

    Returns:
        ``[N, L * F]`` features, level by level (level 0's ``F`` values first).

    Example:
        >>> layout = GridLayout.create(2, n_levels=4, n_features=2, log2_hashmap_size=10,
        ...                            base_resolution=4, per_level_scale=2.0)
        >>> table = torch.randn(layout.n_rows, 2)
        >>> hash_grid_encode(torch.rand(5, 2), table, layout).shape
        torch.Size([5, 8])
    """
    x = x.clamp(0.0, 1.0)
    corners = corner_offsets(layout.n_dims, x.device)  # [2^d, d]
    outputs = []
    for level in range(layout.n_levels):
        res = layout.resolutions[level]
        pos = x * res
        cell = lower_corners(pos, res)  # [N, d]
        w_upper = interpolation_weights(pos - cell.to(pos.dtype), interpolation)  # [N, d]
        vertices = cell[:, None, :] + corners[None]  # [N, 2^d, d]
        rows = corner_indices(vertices, level, layout) + layout.offsets[level]  # [N, 2^d]
        weights = torch.where(corners[None].bool(), w_upper[:, None, :], 1.0 - w_upper[:, None, :])
        weights = weights.prod(dim=-1)  # [N, 2^d]
        outputs.append((weights[..., None] * table[rows]).sum(dim=1))  # [N, F]
    return torch.cat(outputs, dim=-1)

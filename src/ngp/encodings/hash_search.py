"""A search over hash functions for a data set: the paper's open question "optimise the hash function"
(section 6 suggests an evolutionary search over the discrete space), on the xor-of-products family
``h(c) = xor_i (c_i * P_i mod 2^32) mod T`` that tiny-cuda-nn's ``CoherentPrime``, ``Prime`` and
``ReversedPrime`` belong to. A result is a layout's ``hash_primes`` (the ``hash_primes`` config key).

What is optimised is the *collision rate* of :mod:`ngp.encodings.collisions` (the share of the
vertices the data occupies whose table row another occupied vertex uses), averaged over the
**contested** levels: the hashed levels whose occupied vertices number at most
:data:`CONTESTED_LOAD` times their rows. On finer levels every hash, however good, puts almost every
vertex in a shared row (past ``2T`` vertices even a perfectly even spread shares every row), so they
cannot tell hash functions apart and would only add time. Counting is exact (every occupied vertex of
a contested level, no sampling).

The search itself: a population of factor tuples (the layout's own factors, tiny-cuda-nn's three and
random 32-bit primes), scored, then for each generation the best quarter kept and the rest replaced by
children: per-axis crossover of two tournament-chosen parents, then a mutation of one axis (a new random
prime, a prime near the old factor, or 1, the factor that keeps neighbours along an axis in neighbouring
rows as ``CoherentPrime`` does along x). Deterministic for a seed.

Example:
    >>> result = search_hash_primes(grid.layout, pixel_centres, generations=20, population=16)
    >>> result.primes, result.collision_rate, result.baselines["CoherentPrime"]
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ngp.encodings.collisions import occupied_vertices
from ngp.kernels.reference.hashgrid import CONFIG_HASHES, HASH_PRIMES, GridLayout, corner_indices

#: A hashed level is contested while its occupied vertices number at most this many times its rows:
#: beyond twice, even a hash that spread them perfectly evenly would leave every vertex sharing a row.
CONTESTED_LOAD = 2


@dataclass
class HashSearchResult:
    """What :func:`search_hash_primes` found.

    Attributes:
        primes: the best factors found, one per axis (a layout's ``hash_primes``).
        collision_rate: their mean collision rate over the contested levels (the objective).
        level_rates: their collision rate per contested level, ``{level: rate}``.
        baselines: the objective of tiny-cuda-nn's five hash functions on the same vertices, by name.
        history: the best objective after each generation (index 0: the first population).
        contested_levels: the levels the objective averages over.
        evaluated: distinct factor tuples scored.
    """

    primes: tuple[int, ...]
    collision_rate: float
    level_rates: dict[int, float]
    baselines: dict[str, float]
    history: list[float] = field(default_factory=list)
    contested_levels: tuple[int, ...] = ()
    evaluated: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def contested_vertices(layout: GridLayout, points: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{level: [M, d] int64}``: the occupied vertices of each contested level of ``layout`` (see the
    module doc) for data ``points [N, d]`` in ``[0, 1]^d``."""
    contested = {}
    for level in range(layout.n_levels):
        if not layout.hashed[level] or layout.hash_function == "Tiled":
            continue
        vertices = occupied_vertices(points, layout, level)
        if len(vertices) <= CONTESTED_LOAD * (layout.offsets[level + 1] - layout.offsets[level]):
            contested[level] = vertices
    return contested


def level_collision_rates(layout: GridLayout, vertices: dict[int, torch.Tensor]) -> dict[int, float]:
    """``{level: collision rate}`` of ``layout``'s hash on each level's occupied ``vertices``."""
    rates = {}
    for level, cells in vertices.items():
        rows = corner_indices(cells, level, layout)
        counts = torch.bincount(rows, minlength=layout.offsets[level + 1] - layout.offsets[level])
        rates[level] = float((counts[rows] > 1).sum()) / max(len(cells), 1)
    return rates


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for ``n < 4,759,123,141`` (bases 2, 7, 61), enough for 32-bit factors."""
    if n < 2:
        return False
    for p in (2, 3, 5, 7, 11, 13, 61):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 7, 61):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def random_prime(rng: random.Random, low: int = 2**20, high: int = 2**32) -> int:
    """A uniformly drawn prime in ``[low, high)``."""
    while True:
        n = rng.randrange(low, high) | 1
        if n < high and is_prime(n):
            return n


def _prime_near(n: int, rng: random.Random) -> int:
    """A prime within about a thousandth of ``n`` (a local step of the search)."""
    spread = max(n // 1000, 64)
    return random_prime(rng, max(2, n - spread), min(2**32, n + spread + 2))


def search_hash_primes(
    layout: GridLayout,
    points: torch.Tensor,
    generations: int = 30,
    population: int = 24,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> HashSearchResult:
    """Evolve xor-of-products factors for ``layout`` that collide least on data ``points [N, d]``.

    Args:
        layout: the grid (its levels, table sizes and dimension); its own factors seed the population.
        points: data points in ``[0, 1]^d`` (pixel centres, surface points, points in occupied cells).
        generations: rounds of selection after the first population.
        population: candidates per generation (at least 4).
        seed: the search's random seed.
        progress: called with ``(generation, best objective)`` after each generation.

    Raises ValueError when no level is contested (nothing a hash function can change) or for bad arguments.
    """
    if generations < 0 or population < 4:
        raise ValueError(f"need generations >= 0 and population >= 4, got {generations} and {population}")
    if not any(layout.hashed):
        raise ValueError("the grid has no hashed level: there is no hash function to search")
    base = layout if layout.hash_function in HASH_PRIMES else dataclasses.replace(
        layout, hash_function="CoherentPrime", hash_primes=())
    vertices = contested_vertices(base, points)
    if not vertices:
        raise ValueError(f"no hashed level is contested: every hashed level has more than {CONTESTED_LOAD}x its rows "
                         "in occupied vertices, where every hash function collides on almost every vertex")
    d = layout.n_dims
    level_rates: dict[tuple[int, ...], dict[int, float]] = {}  # per candidate, scored once
    scores: dict[tuple[int, ...], float] = {}

    def score(primes: tuple[int, ...]) -> float:
        if primes not in scores:
            level_rates[primes] = level_collision_rates(dataclasses.replace(base, hash_primes=primes), vertices)
            scores[primes] = _mean(level_rates[primes])
        return scores[primes]

    rng = random.Random(seed)
    seeds = [tuple(base.primes[:d])] + [tuple(HASH_PRIMES[name][:d]) for name in HASH_PRIMES]
    pool = list(dict.fromkeys(seeds))
    while len(pool) < population:
        pool.append(tuple(random_prime(rng) for _ in range(d)))
    history = []
    for generation in range(generations + 1):
        ranked = sorted(dict.fromkeys(pool), key=lambda p: (score(p), p))
        history.append(score(ranked[0]))
        if progress is not None:
            progress(generation, history[-1])
        if generation == generations:
            break
        elite = ranked[:max(2, population // 4)]
        pool = list(elite)
        while len(pool) < population:
            a, b = _tournament(ranked, rng, score), _tournament(ranked, rng, score)
            child = [a[i] if rng.random() < 0.5 else b[i] for i in range(d)]
            pool.append(_mutated(child, rng))
    best = min(scores, key=lambda p: (scores[p], p))
    baselines = {name: _mean(level_collision_rates(dataclasses.replace(base, hash_function=name, hash_primes=()),
                                                   vertices))
                 for name in CONFIG_HASHES}
    return HashSearchResult(primes=best, collision_rate=scores[best], level_rates=level_rates[best],
                            baselines=baselines, history=history, contested_levels=tuple(vertices),
                            evaluated=len(scores))


def _mean(rates: dict[int, float]) -> float:
    """The objective: the mean of the contested levels' collision rates."""
    return sum(rates.values()) / len(rates)


def _tournament(ranked: Sequence[tuple[int, ...]], rng: random.Random, score) -> tuple[int, ...]:
    """The better of two candidates drawn at random."""
    a, b = rng.choice(ranked), rng.choice(ranked)
    return a if score(a) <= score(b) else b


def _mutated(child: list[int], rng: random.Random) -> tuple[int, ...]:
    axis = rng.randrange(len(child))
    roll = rng.random()
    if roll < 0.1:
        child[axis] = 1
    elif roll < 0.5 and child[axis] > 2:
        child[axis] = _prime_near(child[axis], rng)
    else:
        child[axis] = random_prime(rng)
    return tuple(child)


def format_search(result: HashSearchResult) -> str:
    """The result as lines: the built-in hashes and the best found, then the best's rate per level."""
    lines = [f"mean collision rate over contested levels {list(result.contested_levels)}:"]
    for name, rate in sorted(result.baselines.items(), key=lambda item: item[1]):
        lines.append(f"  {name:<14} {rate:8.2%}")
    lines.append(f"  {'searched':<14} {result.collision_rate:8.2%}   hash_primes {list(result.primes)} "
                 f"({result.evaluated} candidates)")
    lines.append("  per level: " + ", ".join(f"{lv}: {r:.2%}" for lv, r in result.level_rates.items()))
    return "\n".join(lines)


__all__ = ["CONTESTED_LOAD", "HashSearchResult", "contested_vertices", "format_search", "is_prime",
           "level_collision_rates", "random_prime", "search_hash_primes"]

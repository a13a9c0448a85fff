"""The hash-function search (``ngp.encodings.hash_search``, ``ngp hash-search``): its objective against
the collision statistics, its primes against trial division, and that it finds what it claims."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from typer.testing import CliRunner

from ngp.cli import app
from ngp.encodings.collisions import collision_statistics
from ngp.encodings.hash_search import (
    contested_vertices,
    is_prime,
    level_collision_rates,
    random_prime,
    search_hash_primes,
)
from ngp.image.data import pixel_centres
from ngp.kernels.reference.hashgrid import HASH_PRIMES, GridLayout

runner = CliRunner()


def trial_division(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def test_primality_against_trial_division():
    rng = random.Random(1)
    numbers = list(range(0, 2000)) + [rng.randrange(2**31, 2**32) for _ in range(300)]
    numbers += [2654435761, 805459861, 3674653429, 2**32 - 5, 25326001, 3215031751]  # primes; strong pseudoprimes
    assert [is_prime(n) for n in numbers] == [trial_division(n) for n in numbers]
    drawn = [random_prime(rng) for _ in range(20)]
    assert all(trial_division(p) and 2**20 <= p < 2**32 for p in drawn) and len(set(drawn)) == 20


def dense_image_case():
    """A 256 x 256 image's pixel centres on a grid whose level 3 (128 cells, 16641 vertices) shares a
    2^14-row table: the only contested level (level 4 has 66049 vertices, more than 2^15)."""
    return GridLayout.create(2, 6, 2, 14, 16, 2.0), pixel_centres(256, 256)


def test_objective_is_the_collision_statistics_on_contested_levels():
    layout, points = dense_image_case()
    vertices = contested_vertices(layout, points)
    assert list(vertices) == [3]
    stats = collision_statistics(layout, points)
    assert level_collision_rates(layout, vertices) == {3: pytest.approx(stats[3].collision_rate)}
    other = dataclasses.replace(layout, hash_primes=(7, 40503))
    expected = collision_statistics(other, points)[3].collision_rate
    assert level_collision_rates(other, vertices)[3] == pytest.approx(expected)


def test_search_beats_every_built_in_hash_on_a_dense_grid_and_is_reproducible():
    layout, points = dense_image_case()
    result = search_hash_primes(layout, points, generations=8, population=12, seed=3)
    assert result.contested_levels == (3,) and result.evaluated > 12
    assert result.history == sorted(result.history, reverse=True)  # elitism: the best never gets worse
    assert result.collision_rate == result.history[-1] == result.level_rates[3]
    assert set(result.baselines) == {"CoherentPrime", "Prime", "ReversedPrime", "BaseConvert", "Rng"}
    assert result.collision_rate < 0.5 * min(result.baselines.values())  # built-ins: 27 % to 73 %
    measured = level_collision_rates(dataclasses.replace(layout, hash_primes=result.primes),
                                     contested_vertices(layout, points))
    assert measured[3] == result.collision_rate
    assert search_hash_primes(layout, points, generations=8, population=12, seed=3).primes == result.primes


def test_search_refuses_what_it_cannot_search():
    layout, points = dense_image_case()
    with pytest.raises(ValueError, match="population"):
        search_hash_primes(layout, points, population=2)
    with pytest.raises(ValueError, match="no hashed level"):
        search_hash_primes(GridLayout.create(2, 3, 2, 14, 4, 2.0), points)
    with pytest.raises(ValueError, match="contested"):  # 2^4 rows for 4225 vertices and more
        search_hash_primes(GridLayout.create(2, 3, 2, 4, 64, 2.0), points)


def test_a_searched_layout_keeps_its_primes_through_a_level_view():
    layout = GridLayout.create(3, 4, 2, 10, 8, 2.0, hash_primes=(1, 3, 5))
    assert layout.level(3).hash_primes == (1, 3, 5) and layout.primes[:3] == (1, 3, 5)
    assert GridLayout.create(3, 4, 2, 10, 8, 2.0, hash_function="Prime").primes == HASH_PRIMES["Prime"]
    with pytest.raises(ValueError, match="BaseConvert"):
        GridLayout.create(3, 4, 2, 10, 8, 2.0, hash_function="BaseConvert", hash_primes=(1, 3, 5))


def test_cli_searches_a_run_and_trains_both_hashes(tmp_path):
    config = tmp_path / "small.json"
    config.write_text(json.dumps({"encoding": {"n_levels": 6, "log2_hashmap_size": 8, "base_resolution": 4,
                                               "per_level_scale": 1.5}, "network": {"n_neurons": 16}}))
    run = tmp_path / "run"
    result = runner.invoke(app, ["image", "fit", "builtin:astronaut", "--out", str(run), "--steps", "5", "--config",
                                 str(config), "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "search.json"
    result = runner.invoke(app, ["hash-search", str(run), "--generations", "3", "--population", "6", "--json", str(out),
                                 "--train-steps", "5", "--out", str(tmp_path / "trained")])
    assert result.exit_code == 0, result.output
    found = json.loads(out.read_text())
    assert "searched" in result.output and len(found["primes"]) == 2 and found["contested_levels"]
    assert found["collision_rate"] <= found["baselines"]["CoherentPrime"]
    rows = (tmp_path / "trained" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "encoding.hash_primes" in rows[0] and "log2_hashmap_size" in rows[0]
    assert f"hash_primes {found['primes']}: psnr" in result.output
    assert runner.invoke(app, ["hash-search", str(run), "--population", "2"]).exit_code == 1
    assert runner.invoke(app, ["hash-search", str(tmp_path / "missing")]).exit_code != 0

"""ngp sweep's grid: --set parsing, the cross product, and every config checked before any run."""

import itertools

import pytest

import ngp.sweep as sweep
from ngp.config import ConfigError
from ngp.sweep.grid import expand, nested_config, parse_set, parse_value, run_name
from ngp.sweep.ray_backend import worker_resources


def test_values_are_json_where_they_parse_and_strings_otherwise():
    assert parse_value("14") == 14 and isinstance(parse_value("14"), int)
    assert parse_value("1e-2") == 0.01
    assert parse_value("true") is True and parse_value("false") is False and parse_value("null") is None
    assert parse_value("Prime") == "Prime"
    s = parse_set('encoding.hash=Prime,"Rng",[1,2],{"a":1,"b":2},"x,y"')
    assert s.key == "encoding.hash"
    assert s.values == ("Prime", "Rng", [1, 2], {"a": 1, "b": 2}, "x,y")


@pytest.mark.parametrize("text, message", [
    ("encoding.log2_hashmap_size", "expected KEY=V1,V2"),
    ("encoding.log2_hashmap_size=14,,16", "empty value"),
    ("encoding.log2_hashmap_size=", "empty value"),
    ("=14,16", "not a dotted config key"),
    ("encoding..size=1", "not a dotted config key"),
    ("encoding.log2_hashmap_size=14,14", "given twice"),
    ("training.data=a.png,b.png", "DATA argument"),
])
def test_malformed_set_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        parse_set(text)


def test_cross_product_with_repeats():
    a, b = parse_set("encoding.log2_hashmap_size=14,16,18"), parse_set("training.batch_size=1024,4096")
    combos = expand([a, b], repeats=2)
    expected = list(itertools.product(a.values, b.values, range(2)))
    assert [(c.settings["encoding.log2_hashmap_size"], c.settings["training.batch_size"], c.repeat)
            for c in combos] == expected
    assert len({c.name for c in combos}) == 12
    first = combos[1]
    assert first.name == "encoding.log2_hashmap_size=14__training.batch_size=1024__repeat=1"
    assert first.config == {"encoding": {"log2_hashmap_size": 14}, "training": {"batch_size": 1024}}


def test_names_are_folder_safe():
    name = run_name({"encoding.hash": "a/b c", "x.y": [1, 2]}, 0)
    assert "/" not in name and " " not in name
    assert name.startswith("encoding.hash=a_b_c__x.y=")


@pytest.mark.parametrize("sets, repeats, message", [
    (["encoding.log2_hashmap_size=14", "encoding.log2_hashmap_size=16"], 1, "overlap"),
    (["encoding={\"otype\":\"Frequency\"}", "encoding.n_frequencies=4"], 1, "overlap"),
    (["encoding.hash=a/b,a_b"], 1, "share the run folder"),
    (["encoding.log2_hashmap_size=14"], 0, "repeats"),
])
def test_bad_grids(sets, repeats, message):
    with pytest.raises(ValueError, match=message):
        expand([parse_set(s) for s in sets], repeats)


def test_nested_config_merges_siblings():
    assert nested_config({"a.b": 1, "a.c.d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}


@pytest.fixture
def no_runs(monkeypatch):
    """Fails the test if any run starts."""
    def refuse(job):
        raise AssertionError(f"run {job.name} started")

    monkeypatch.setattr(sweep, "execute", refuse)


@pytest.mark.parametrize("sets, message", [
    (["encoding.log2_hashmap_size=12", "encoding.log2_hashmap_sise=12"], "unknown key.*log2_hashmap_sise"),
    (["training.batch_sise=1024"], "unknown key.*batch_sise"),
    (["trainin.batch_size=1024"], "unknown key.*trainin"),
    (["network.n_neurons=64", "optimizer.nested.nested.learning_rat=1e-2"], "unknown key.*learning_rat"),
    (["loss.otype=L2,NotALoss"], "NotALoss"),
    # only the last combination is bad: still refused before the first run
    (["encoding.log2_hashmap_size=12,abc"], "log2_hashmap_size=abc"),
    (["encoding.log2_hashmap_size.x=1"], "not a config section"),
])
def test_unknown_or_bad_setting_fails_before_any_run(tmp_path, no_runs, sets, message):
    image = tmp_path / "a.png"
    image.write_bytes(b"")  # never read: the configs are checked first
    with pytest.raises(ConfigError, match=message):
        sweep.run_sweep("image", image, tmp_path / "out", sets, steps=5)
    assert not (tmp_path / "out").exists()


def test_budget_given_twice_and_missing_data_fail_before_any_run(tmp_path, no_runs):
    with pytest.raises(ValueError, match="both give the runs' budget"):
        sweep.run_sweep("image", "builtin:astronaut", tmp_path / "out", ["training.steps=5,10"], steps=5)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        sweep.run_sweep("image", tmp_path / "missing.png", tmp_path / "out", ["training.batch_size=64"], steps=5)
    with pytest.raises(ValueError, match="unknown primitive"):
        sweep.run_sweep("volume", "builtin", tmp_path / "out", [], steps=5)
    assert not (tmp_path / "out").exists()


def test_sweep_refuses_a_folder_that_holds_something_else(tmp_path, no_runs):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no sweep"):
        sweep.run_sweep("image", "builtin:astronaut", out, ["training.batch_size=64"], steps=5)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_ray_task_takes_the_smallest_worker_whole():
    nodes = [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 2.0}},
             {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 1.0}},  # dead: ignored
             {"Alive": True, "Resources": {"memory": 1.0}}]  # a head without CPUs runs nothing
    assert worker_resources(nodes) == (4.0, 1.0)
    with pytest.raises(RuntimeError, match="no alive node"):
        worker_resources(nodes[2:])


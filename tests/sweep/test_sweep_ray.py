"""ngp sweep --ray: the same rows as a sequential sweep, from a one-CPU local Ray cluster."""

import numpy as np
import pytest
from PIL import Image

import ngp.sweep as sweep

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ngp[sweep]')")

SETS = ["encoding.log2_hashmap_size=10,12"]
#: Timings differ between any two runs; everything else must not.
TIMINGS = ("seconds", "samples_per_second")


def _not_here(job):
    raise AssertionError(f"run {job.name} ran in the sweep's process, not in a Ray task")


@pytest.mark.slow  # starting a Ray instance takes seconds
def test_ray_gives_the_rows_of_a_sequential_sweep(tmp_path, monkeypatch):
    image = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(image)
    sequential = sweep.run_sweep("image", image, tmp_path / "seq", SETS, steps=5, device="cpu")
    monkeypatch.setattr(sweep, "execute", _not_here)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        lines = []
        on_ray = sweep.run_sweep("image", image, tmp_path / "ray", SETS, steps=5, device="cpu", ray_address="local",
                                 log=lines.append)
    finally:
        ray.shutdown()
    assert len(lines) == 2 and len(on_ray) == 2
    for a, b in zip(sequential, on_ray):
        assert set(a) == set(b)
        assert {k: v for k, v in a.items() if k not in TIMINGS + ("psnr",)} == \
            {k: v for k, v in b.items() if k not in TIMINGS + ("psnr",)}
        # a Ray task runs torch on its one CPU: a different summation order may move the last digits
        assert b["psnr"] == pytest.approx(a["psnr"], abs=1e-3)
    assert (tmp_path / "ray" / "results.csv").read_text().splitlines()[0] == \
        (tmp_path / "seq" / "results.csv").read_text().splitlines()[0]

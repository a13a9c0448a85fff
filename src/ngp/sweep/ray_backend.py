"""Fan a sweep's runs out to a Ray cluster: one run per task, each task holding a whole worker.

Each task asks for as many CPUs (and GPUs) as the smallest worker node has, so a run never shares its
cores with another run, as in a sequential sweep. Workers need ``ngp`` installed and the same DATA path;
runs write into ``DIR/runs/`` as seen by the worker (a shared file system keeps everything in one place;
without one the sweep's machine still gets each run's ``metrics.json``, which is what resuming reads).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

from ngp.sweep.runner import Job, execute


def import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'ngp[sweep]' (or pip install 'ray>=2.9')") from None
    return ray


def worker_resources(nodes: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
    """``(num_cpus, num_gpus)`` of the smallest alive node that has CPUs (``ray.nodes()`` entries); a
    head node without CPUs runs no tasks and is left out.

    Example:
        >>> worker_resources([{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
        ...                   {"Alive": True, "Resources": {"CPU": 4.0}}])
        (4.0, 0.0)
    """
    workers = [node["Resources"] for node in nodes if node.get("Alive") and node["Resources"].get("CPU", 0) > 0]
    if not workers:
        raise RuntimeError("the Ray cluster has no alive node with CPUs to run on")
    return min(w["CPU"] for w in workers), min(w.get("GPU", 0.0) for w in workers)


def run_on_ray(address: str, jobs: Sequence[Job], on_result: Callable[[Job, dict, dict], None]) -> None:
    """Run ``jobs`` as Ray tasks on the cluster at ``address`` (``ray.init(address=...)``; ``"local"``
    starts one on this machine; an already initialised Ray is used as it is) and call
    ``on_result(job, row, metrics)`` as each finishes, in the order they finish."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False)
    try:
        cpus, gpus = worker_resources(ray.nodes())
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute)
        pending = {remote.remote(job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            row, metrics = ray.get(ready[0])
            on_result(job, row, metrics)
    finally:
        if started:
            ray.shutdown()

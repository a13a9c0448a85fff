"""SDF benchmarks: ground-truth libraries, and fit quality against training time.

    python benchmarks/bench_sdf.py gt  [--mesh armadillo.obj] [--points 100000] [--reference 20000]
    python benchmarks/bench_sdf.py floor [--mesh armadillo.obj] [--resolution 256]
    python benchmarks/bench_sdf.py fit [--mesh armadillo.obj] [--seconds 30,60,120] [--steps 100,200]
                                       [--config FILE] [--set training.batch_size=32768 ...] [--seed 0]

``gt`` times every candidate ground-truth library on the training distribution (3/4 near-surface,
1/4 uniform, in the unit cube) and counts sign errors against libigl's exact generalised winding
number; candidates whose package is missing are skipped (pysdf needs a C++ compiler and Eigen).

``floor`` is the best a marching-cubes mesh can do at a resolution: marching cubes of the *exact* SDF on
the grid ``ngp sdf fit`` meshes a model on (the mesh's box), measured like a run's outputs (normal angle
of the mesh, Chamfer distance). A learned mesh's ``normal_angle_mesh_deg`` is compared with this.

``fit`` trains once through the shared loop and evaluates at each budget (the clock stops while
evaluating, so a 120 s point is the same as a separate 120 s run): IoU on a 128^3 grid and on
near-surface samples, Chamfer distance of the 256^3 marching-cubes mesh, steps reached. Time budgets
include filling the sample pool, as ``ngp sdf fit --seconds`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import ngp  # noqa: F401  (first: its OpenMP settings are read when torch loads libgomp)
import torch

DATA = Path(os.environ.get("NGP_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def load_unit_mesh(path):
    from ngp.io.meshes import load_mesh, normalize_mesh

    return normalize_mesh(load_mesh(path))[0]


# -- ground truth ------------------------------------------------------------------------------------
def candidates(vertices, faces):
    """name -> (build seconds, fn(points [N, 3]) -> signed distances [N], negative inside)."""
    import igl

    out = {}

    def timed(build):
        start = time.perf_counter()
        fn = build()
        return time.perf_counter() - start, fn

    try:
        import pysdf

        out["pysdf (robust)"] = timed(lambda: (lambda f: lambda p: -f(np.ascontiguousarray(p, np.float32)).reshape(-1))(
            pysdf.SDF(vertices.astype(np.float32), faces.astype(np.uint32))))
    except ImportError:
        print("  (pysdf not installed: skipped)")
    try:
        import point_cloud_utils as pcu

        out["pcu.signed_distance_to_mesh"] = (0.0, lambda p: pcu.signed_distance_to_mesh(p, vertices, faces)[0])
    except ImportError:
        print("  (point-cloud-utils not installed: skipped)")
    for name, kind in (("fast_winding_number", igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER),
                       ("pseudonormal", igl.SIGNED_DISTANCE_TYPE_PSEUDONORMAL),
                       ("winding_number (exact)", igl.SIGNED_DISTANCE_TYPE_WINDING_NUMBER)):
        out[f"igl.signed_distance {name}"] = (0.0, lambda p, k=kind: igl.signed_distance(p, vertices, faces, sign_type=k)[0])

    def ours():
        from ngp.sdf.sampling import MeshSDF

        return MeshSDF(vertices, faces)

    out["ngp MeshSDF (igl AABB + FWN BVH, cached)"] = timed(ours)
    try:
        import trimesh

        mesh = trimesh.Trimesh(vertices, faces, process=False)
        tree = igl.AABB()
        tree.init(vertices, faces)
        out[f"igl AABB + trimesh.contains ({type(mesh.ray).__module__.split('.')[-1]})"] = (0.0, lambda p: np.where(
            mesh.contains(p), -1.0, 1.0) * np.sqrt(tree.squared_distance(vertices, faces, p)[0]))
    except ImportError:
        pass
    return out


def bench_gt(args) -> None:
    import igl

    from ngp.sdf.sampling import MeshSDF, SampleGenerator, mesh_aabb

    mesh = load_unit_mesh(args.mesh)
    vertices, faces = np.ascontiguousarray(mesh.vertices), np.ascontiguousarray(mesh.faces)
    generator = SampleGenerator(MeshSDF(vertices, faces), mesh_aabb(vertices), np.random.default_rng(0))
    n_near = args.points * 3 // 4
    points = np.concatenate([generator.near_points(n_near), generator.uniform_points(args.points - n_near)])
    rng = np.random.default_rng(1)
    k_near = args.reference * 3 // 4
    check = np.concatenate([rng.choice(n_near, k_near, replace=False),
                            n_near + rng.choice(args.points - n_near, args.reference - k_near, replace=False)])
    start = time.perf_counter()
    truth = igl.winding_number(vertices, faces, points[check]) > 0.5
    print(f"{Path(args.mesh).name}: {len(faces)} faces, {args.points} points (3/4 near surface, 1/4 uniform); "
          f"reference = exact winding number on {args.reference} of them ({time.perf_counter() - start:.1f} s)")
    exact_unsigned = np.sqrt(igl.point_mesh_squared_distance(points, vertices, faces)[0])
    print(f"{'library':48s} {'build s':>8s} {'k points/s':>11s} {'sign errors':>16s} {'|d| rel err > 1%':>17s}")
    for name, (build, fn) in candidates(vertices, faces).items():
        fn(points[:1000])
        times, result = [], None
        for _ in range(1 if "exact" in name else args.repeats):
            start = time.perf_counter()
            result = np.asarray(fn(points)).reshape(-1)
            times.append(time.perf_counter() - start)
        errors = int(((result[check] <= 0) != truth).sum())
        relative = np.abs(np.abs(result) - exact_unsigned) / np.maximum(exact_unsigned, 1e-12)
        print(f"{name:48s} {build:8.2f} {args.points / np.median(times) / 1e3:11.0f} "
              f"{errors:>7d} / {args.reference:<7d} {100 * (relative > 0.01).mean():16.2f}%")


# -- fitting -----------------------------------------------------------------------------------------
def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """``a.b.c=value`` (value parsed as JSON) into a nested dict."""
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(value)
    return config


def bench_fit(args) -> None:
    """One run through the shared loop, continued budget by budget (the loop's clock counts training
    steps only, so a 120 s point is the same as a separate 120 s run); each stop writes the run's
    outputs, whose metrics are the figures."""
    import tempfile

    from ngp.config import load_config
    from ngp.io.runs import RunFolder
    from ngp.sdf.trainer import SDFOutputs, build_sdf_task
    from ngp.train.loop import LoopState, train
    from ngp.train.precision import resolve_device
    from ngp.train.settings import LoopSettings, build_config

    device = resolve_device("auto")
    user = apply_overrides(load_config(args.config) if args.config else {}, args.set)
    config = build_config("sdf", user, {"data": str(Path(args.mesh).resolve()), "seed": args.seed}, device)
    torch.manual_seed(args.seed)
    task = build_sdf_task(config, device, "auto", SDFOutputs(resolution=args.resolution))
    print(f"{Path(args.mesh).name}: config {json.dumps(config['training'])}, lr "
          f"{config['optimizer'].get('nested', {}).get('nested', config['optimizer']).get('learning_rate')}, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'budget':>8s} {'steps':>6s} {'train s':>8s} {'pool s':>7s} {'IoU grid':>9s} {'IoU near':>9s} "
          f"{'chamfer unit':>13s} {'chamfer mesh':>13s} {'loss':>8s} {'load':>5s}")
    budgets = [("s", float(s)) for s in args.seconds.split(",") if s] + [("steps", int(s)) for s in args.steps.split(",") if s]
    state, results, metrics = LoopState(), [], None
    with tempfile.TemporaryDirectory(prefix="bench_sdf_") as folder:
        run = RunFolder.create(folder).start()
        for kind, value in budgets:
            left = value - (state.seconds if kind == "s" else state.step)
            if left > 0 or metrics is None:
                left = max(left, 1)
                settings = LoopSettings(seconds=left, checkpoint_every=0) if kind == "s" else \
                    LoopSettings(steps=int(left), checkpoint_every=0)
                metrics = train(task, run, settings, state, progress=False, log=lambda message: None)
            row = {"budget": f"{value:g}{kind}", "steps": state.step, "seconds": state.seconds,
                   "seconds_pool": metrics["seconds_ground_truth_pool"], "iou_grid": metrics["iou_grid"],
                   "iou_near": metrics["iou_near_surface"], "chamfer_unit": metrics["chamfer_unit_cube"],
                   "chamfer_mesh": metrics["chamfer_mesh_units"], "loss": metrics["final_loss"],
                   "load": os.getloadavg()[0]}
            results.append(row)
            print(f"{row['budget']:>8s} {row['steps']:6d} {row['seconds']:8.1f} {row['seconds_pool']:7.1f} "
                  f"{row['iou_grid']:9.4f} {row['iou_near']:9.4f} {_number(row['chamfer_unit']):>13s} "
                  f"{_number(row['chamfer_mesh']):>13s} {row['loss']:8.4f} {row['load']:5.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"mesh": str(args.mesh), "config": config, "results": results}, indent=2))


def bench_floor(args) -> None:
    from ngp.sdf.metrics import chamfer_distance, exact_sdf_mesh, mesh_normal_angle
    from ngp.sdf.sampling import MeshSDF, mesh_aabb

    unit = load_unit_mesh(args.mesh)
    gt = MeshSDF(unit.vertices, unit.faces)
    start = time.perf_counter()
    vertices, faces = exact_sdf_mesh(gt, mesh_aabb(unit.vertices), args.resolution)
    seconds = time.perf_counter() - start
    angle = mesh_normal_angle(vertices, faces, gt.vertices, gt.faces, 100_000, np.random.default_rng(3))
    chamfer = chamfer_distance(vertices, faces, gt.vertices, gt.faces, 100_000, np.random.default_rng(2))
    print(f"{Path(args.mesh).name}: marching cubes of the exact SDF at {args.resolution} ({seconds:.1f} s): "
          f"normal angle {angle:.3f} deg, Chamfer {chamfer:.4e} (unit cube), {len(faces)} faces")


def _number(value) -> str:
    return "-" if value is None else f"{value:.3e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gt = sub.add_parser("gt", help="compare ground-truth SDF libraries")
    gt.add_argument("--mesh", default=str(DATA / "sdf" / "armadillo.obj"))
    gt.add_argument("--points", type=int, default=100_000)
    gt.add_argument("--reference", type=int, default=20_000)
    gt.add_argument("--repeats", type=int, default=3)
    floor = sub.add_parser("floor", help="marching cubes of the exact SDF: the floor of a learned mesh's errors")
    floor.add_argument("--mesh", default=str(DATA / "sdf" / "armadillo.obj"))
    floor.add_argument("--resolution", type=int, default=256)
    fit = sub.add_parser("fit", help="fit quality against training time")
    fit.add_argument("--mesh", default=str(DATA / "sdf" / "armadillo.obj"))
    fit.add_argument("--seconds", default="30,60,120", help="comma-separated time budgets")
    fit.add_argument("--steps", default="", help="comma-separated step budgets (after the time budgets)")
    fit.add_argument("--config", default=None)
    fit.add_argument("--set", action="append", default=[], help="config override, e.g. training.batch_size=32768")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--resolution", type=int, default=256)
    fit.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if not Path(args.mesh).is_file():
        parser.error(f"mesh not found: {args.mesh} (set NGP_SHARED_DATA or pass --mesh)")
    {"gt": bench_gt, "floor": bench_floor, "fit": bench_fit}[args.command](args)


if __name__ == "__main__":
    main()

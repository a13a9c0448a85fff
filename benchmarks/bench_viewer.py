"""The live viewer's responsiveness and its cost to training (run alone: 2 cores, nothing else running).

1. ``latency``: a trained NeRF run served as ``ngp view`` does; a client (the test client, speaking
   viser's protocol like a browser) moves the camera to N new poses on an orbit; per move, the time
   until the first (coarse) frame arrives and until the frame at the full canvas arrives. Medians.
2. ``training``: the same NeRF training with and without ``--viewer`` (a client connected, camera
   still), one after the other in this process; wall seconds per step, and the slowdown.

Usage::

    python benchmarks/bench_viewer.py latency RUN [--moves 10 --canvas 640x480]
    python benchmarks/bench_viewer.py training [DATA] [--steps 200]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "viewer"))
from client import ViserTestClient, free_port  # noqa: E402

from ngp.viewer import Viewer, ViewCamera, view_from_run  # noqa: E402


def orbit(view, k: int, n: int) -> ViewCamera:
    """The k-th of n cameras around the home camera's orbit centre, at the home camera's distance."""
    home, centre, up = view.home, view.center, view.up
    offset = home.position - centre
    angle = 2 * math.pi * (k + 1) / (n + 1)
    from scipy.spatial.transform import Rotation

    eye = centre + Rotation.from_rotvec(angle * up).apply(offset)
    return ViewCamera.look_at(eye, centre, up, home.fov_y)


def latency(run: str, moves: int, canvas: tuple[int, int]) -> None:
    view = view_from_run(run, "cpu", log=lambda _: None)
    port = free_port()
    viewer = Viewer(view, port=port, log=lambda _: None)
    stop = threading.Event()
    thread = threading.Thread(target=viewer.serve_forever, args=(stop,), daemon=True)
    thread.start()
    client = ViserTestClient(port)
    first, refined, sizes = [], [], []
    try:
        for k in range(moves):
            cam = orbit(view, k, moves)
            wxyz, position = cam.viser_pose()
            start = time.perf_counter()
            client.send_camera(wxyz, position, cam.fov_y, *canvas)
            frame = client.next_frame(timeout=120)
            first.append(time.perf_counter() - start)
            sizes.append(frame.shape[1::-1])
            while frame.shape[1::-1] != canvas:
                frame = client.next_frame(timeout=300)
            refined.append(time.perf_counter() - start)
    finally:
        client.close()
        stop.set()
        thread.join()
        viewer.close()
    print(f"{run}: {moves} camera moves, canvas {canvas[0]}x{canvas[1]}, {os.cpu_count()} CPUs")
    print(f"  first (coarse) frame: median {statistics.median(first):.3f} s  (max {max(first):.3f} s); "
          f"sizes {sizes[0]} ... {sizes[-1]}")
    print(f"  refined to the canvas: median {statistics.median(refined):.2f} s  (max {max(refined):.2f} s)")


def training(data: str, steps: int) -> None:
    from ngp.nerf.trainer import PRIMITIVE, build_nerf_task, resolve_data
    from ngp.train.session import TrainRequest, ViewerAddress, train_run

    def one(with_viewer: bool) -> tuple[float, dict]:
        port = free_port()
        out = tempfile.mkdtemp(prefix="bench_viewer_")
        request = TrainRequest(out=out, overrides={"steps": steps, "seconds": None, "data": resolve_data(data)},
                               progress=False, force=True, viewer=ViewerAddress(port=port) if with_viewer else None)
        holder = {}
        if with_viewer:
            def connect():
                while True:
                    try:
                        holder["client"] = client = ViserTestClient(port)
                        break
                    except OSError:
                        time.sleep(0.1)
                client.send_camera([1, 0, 0, 0], [0.5, 0.5, -1.0], 0.8, 640, 480)
                while not holder.get("done"):
                    try:
                        client.receive(0.5)  # read and drop what the server sends, as a browser would
                    except Exception:  # the server closed at the end of training
                        break
            threading.Thread(target=connect, daemon=True).start()
        start = time.perf_counter()
        metrics = train_run(PRIMITIVE, lambda c, d, p: build_nerf_task(c, d, p, log=lambda _: None), request,
                            log=lambda _: None)
        wall = time.perf_counter() - start
        holder["done"] = True
        return wall, metrics

    results = {}
    for with_viewer in (False, True):
        wall, metrics = one(with_viewer)
        results[with_viewer] = (wall, metrics["session"]["seconds"], metrics["steps"])
        print(f"  viewer={with_viewer!s:5}: {metrics['steps']} steps, steps' time {results[with_viewer][1]:.1f} s, "
              f"wall {wall:.1f} s (setup and outputs included)")
    (wall_v, train_v, _), (wall_n, train_n, _) = results[True], results[False]
    # the same steps and the same setup and outputs: the extra wall time is the viewer's (its renders
    # between steps, and any slowing of the steps themselves)
    print(f"training slowdown with an idle viewer connected: {(wall_v - wall_n) / train_n:+.1%} "
          f"(extra wall time over the steps' time without it; steps themselves {train_v / train_n - 1:+.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency")
    p.add_argument("run")
    p.add_argument("--moves", type=int, default=10)
    p.add_argument("--canvas", default="640x480")
    p = sub.add_parser("training")
    p.add_argument("data", nargs="?", default="builtin")
    p.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if args.what == "latency":
        latency(args.run, args.moves, tuple(int(v) for v in args.canvas.split("x")))
    else:
        training(args.data, args.steps)


if __name__ == "__main__":
    main()

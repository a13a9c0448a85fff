"""The live viewer: camera conventions, views against the renderers, the server end to end through a
websocket client (as a browser talks to it), training with a viewer, and ``ngp view``."""

import json
import math
import socket
import threading
import time

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from ngp.cli import app
from ngp.geometry.cameras import Cameras, orbit_camera
from ngp.nerf.builtin_scene import make_builtin_scene
from ngp.nerf.renderer import Renderer, RenderSettings
from ngp.viewer import ImageView, NerfView, SdfView, ViewCamera, Viewer, view_from_run
from ngp.viewer.server import COARSE_SECONDS, MIN_PIXELS, frame_size

from .client import ViserTestClient, free_port

TINY_NERF = {
    "encoding": {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 14,
                 "base_resolution": 8, "per_level_scale": 1.5},
    "network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 1},
    "rgb_network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 2},
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0**2 / max(mse, 1e-12))


def viser_pose_by_hand(cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """An OpenGL-axes camera as viser's T_world_camera (OpenCV axes), computed here independently of
    ngp.viewer.camera: the camera's y and z axes flip."""
    rotation = cameras.c2w[0, :, :3].double().numpy() * np.array([1.0, -1.0, -1.0])
    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return np.array([w, x, y, z]), cameras.c2w[0, :, 3].double().numpy()


# ------------------------------------------------------------------------------------------- camera
def test_viser_pose_round_trip_and_axes():
    cam = ViewCamera.look_at(eye=[1.0, 2.0, 3.0], target=[0.0, 0.5, 0.0], up=[0, 1, 0], fov_y=0.7)
    wxyz, position = cam.viser_pose()
    back = ViewCamera.from_viser(wxyz, position, cam.fov_y)
    np.testing.assert_allclose(back.c2w, cam.c2w, atol=1e-12)
    # viser's identity rotation is an OpenCV camera looking down world +z with image y down (-y up)
    ident = ViewCamera.from_viser([1, 0, 0, 0], [0, 0, 0], 1.0)
    np.testing.assert_allclose(ident.forward, [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(ident.c2w[:, 1], [0, -1, 0], atol=1e-12)


def test_view_camera_rays_match_the_camera_it_came_from():
    orbit = orbit_camera([[0.0] * 3, [1.0] * 3], 40, 30, azimuth=20, elevation=10)
    cams = ViewCamera.from_cameras(orbit).cameras(40, 30)
    for name in ("c2w", "fx", "fy", "cx", "cy", "width", "height"):
        torch.testing.assert_close(getattr(cams, name).double(), getattr(orbit, name).double(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("canvas, pixels, expected", [
    ((640, 480), 1e9, (640, 480)),          # refined: the whole canvas
    ((2560, 1440), 1e9, (1280, 720)),       # a huge canvas is capped, aspect kept
    ((640, 480), 0, None),                   # never below MIN_PIXELS
    ((640, 480), 4800, (80, 60)),            # coarse: the aspect of the canvas
])
def test_frame_size(canvas, pixels, expected):
    w, h = frame_size(canvas, pixels)
    if expected is None:
        assert w * h >= 0.9 * MIN_PIXELS and abs(w / h - canvas[0] / canvas[1]) < 0.1
    else:
        assert (w, h) == expected


# -------------------------------------------------------------------------------------------- views
@pytest.fixture(scope="module")
def nerf_view(tmp_path_factory):
    """A randomly initialised field over a fully occupied grid: any camera shows something to compare."""
    from ngp.nerf.field import NerfField
    from ngp.nerf.occupancy import OccupancyGrid

    torch.manual_seed(0)
    aabb = torch.tensor([[0.0] * 3, [1.0] * 3])
    field = NerfField(aabb, 1, TINY_NERF).eval()
    grid = OccupancyGrid(aabb, resolution=32)  # every cell occupied
    renderer = Renderer(field, grid, RenderSettings.for_scene(1))
    cams = Cameras.from_intrinsics(torch.cat([orbit_camera(aabb.numpy(), 32, 24, a, 20).c2w.float()
                                              for a in (0, 90, 180)]), 30.0, 30.0, 16.0, 12.0, 32, 24)
    images = torch.randint(0, 255, (3, 24, 32, 4), dtype=torch.uint8)
    return NerfView(renderer, cams, images, white_background=True)


def test_nerf_view_renders_what_the_renderer_renders(nerf_view):
    orbit = orbit_camera([[0.0] * 3, [1.0] * 3], 48, 36, azimuth=40, elevation=25)
    expected = nerf_view.renderer.render_image(orbit, 0, torch.ones(3))["color"]
    got = nerf_view.render(ViewCamera.from_cameras(orbit), 48, 36, "rgb")
    assert got.shape == (36, 48, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - (expected.numpy() * 255).round().astype(int)).max() <= 1
    depth = nerf_view.render(ViewCamera.from_cameras(orbit), 48, 36, "depth")
    assert depth.shape == (36, 48, 3) and not np.array_equal(depth, got)


def test_nerf_view_frames_and_points(nerf_view):
    frames = nerf_view.frames()
    assert len(frames) == 3 and frames[0].thumbnail.shape[1] == 96
    np.testing.assert_allclose(frames[1].camera.c2w, nerf_view.cameras.c2w[1].double().numpy(), atol=1e-6)
    points = nerf_view.points()
    assert points.shape[1] == 3 and len(points) > 1000
    assert (points >= -1e-6).all() and (points <= 1 + 1e-6).all()  # cells of the unit cube's grid


def test_sdf_view_matches_render_view(tmp_path):
    from ngp.sdf.model import NeuralSDF
    from ngp.sdf.render import render_view

    torch.manual_seed(0)
    sdf = NeuralSDF({"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4},
                    {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1}).eval()
    view = SdfView(sdf)
    orbit = orbit_camera(sdf.aabb.numpy(), 40, 30, azimuth=10, elevation=30)
    for mode in view.modes:  # the view's camera is float32, the orbit's float64: one level of rounding
        got, expected = view.render(ViewCamera.from_cameras(orbit), 40, 30, mode), render_view(sdf, orbit, mode)
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1 and (expected != 255).any()


class _Constant(torch.nn.Module):
    """An 'image model' whose colour is its input: red = x, green = y, blue = 0.25."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, xy):
        return torch.cat([xy, torch.full_like(xy[:, :1], 0.25)], 1)


def test_image_view_shows_the_model_where_the_camera_looks_and_the_target_beside_it():
    from ngp.image.data import ImageTarget

    target = ImageTarget(np.full((8, 8, 3), 200, np.uint8))
    view = ImageView(_Constant(), aspect=1.0, target=target)
    # straight at the point (u, v) = (0.25, 0.75) of the fitted image: x = 0.25, y = 1 - 0.75
    cam = ViewCamera.look_at([0.25, 0.25, 0.5], [0.25, 0.25, 0.0], [0, 1, 0], 0.2)
    centre = view.render(cam, 9, 9, "fitted")[4, 4]
    np.testing.assert_allclose(centre, np.round(np.array([0.25, 0.75, 0.25]) * 255), atol=2)
    # the target sits right of the fitted image, after a gap
    cam = ViewCamera.look_at([1.55, 0.5, 0.3], [1.55, 0.5, 0.0], [0, 1, 0], 0.2)
    np.testing.assert_allclose(view.render(cam, 9, 9, "fitted | target")[4, 4], [200, 200, 200], atol=1)
    assert (view.render(cam, 9, 9, "fitted")[4, 4] == round(0.18 * 255)).all()  # nothing there alone


# ------------------------------------------------------------------------------------------- server
@pytest.fixture()
def served(nerf_view):
    """The viewer on a free port, rendering in a thread as ``ngp view`` does, and a client."""
    port = free_port()
    viewer = Viewer(nerf_view, port=port, log=lambda _: None)
    stop = threading.Event()
    thread = threading.Thread(target=viewer.serve_forever, args=(stop,), daemon=True)
    thread.start()
    client = ViserTestClient(port)
    yield viewer, client
    client.close()
    stop.set()
    thread.join(timeout=30)
    viewer.close()


def test_server_sends_coarse_then_the_renderers_picture_for_the_camera_sent(served, nerf_view):
    viewer, client = served
    width, height = 64, 48
    orbit = orbit_camera([[0.0] * 3, [1.0] * 3], width, height, azimuth=30, elevation=20, fov_degrees=40)
    wxyz, position = viser_pose_by_hand(orbit)
    client.send_camera(wxyz, position, math.radians(40), width, height)
    sizes, frame = [], None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        frame = client.next_frame(timeout=30)
        sizes.append(frame.shape[:2])
        if frame.shape[:2] == (height, width):
            break
    assert sizes[-1] == (height, width), f"never refined to the canvas: {sizes}"
    expected = nerf_view.renderer.render_image(orbit, 0, torch.ones(3))["color"].numpy()
    assert psnr(frame, (expected * 255).round()) > 30  # the JPEG of the renderer's picture
    if len(sizes) > 1:
        assert sizes[0][0] * sizes[0][1] < width * height  # the first frame was coarse


def test_server_listens_on_localhost_only_by_default(nerf_view):
    port = free_port()
    viewer = Viewer(nerf_view, port=port, log=lambda _: None)
    try:
        assert viewer.server.get_host() == "127.0.0.1" and viewer.url == f"http://127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # this machine's outward address
            try:
                probe.connect(("10.255.255.255", 1))
                outward = probe.getsockname()[0]
            except OSError:
                outward = None
        if outward and not outward.startswith("127."):
            with pytest.raises(OSError):
                socket.create_connection((outward, port), timeout=2).close()
    finally:
        viewer.close()


def test_mode_change_rerenders(served, nerf_view):
    viewer, client = served
    orbit = orbit_camera([[0.0] * 3, [1.0] * 3], 32, 24, azimuth=0, elevation=10)
    client.send_camera(*viser_pose_by_hand(orbit), orbit_fov(orbit), 32, 24)
    rgb = None
    while rgb is None or rgb.shape[:2] != (24, 32):
        rgb = client.next_frame()
    viewer._set_mode("depth")
    depth = client.next_frame()
    while depth.shape[:2] != (24, 32):
        depth = client.next_frame()
    expected = nerf_view.render(ViewCamera.from_cameras(orbit), 32, 24, "depth")
    assert psnr(depth, expected) > 28 and psnr(depth, rgb) < 20


def orbit_fov(cameras: Cameras) -> float:
    return 2 * math.atan(0.5 * float(cameras.height[0]) / float(cameras.fy[0]))


# ------------------------------------------------------------------------------------ with training
class _FakeSession:
    def __init__(self):
        from ngp.train.loop import LoopState

        self.state = LoopState()
        self.stop = False

    def stopping(self):
        return self.stop


def test_pause_holds_training_until_resumed_and_a_signal_ends_it(nerf_view):
    viewer = Viewer(nerf_view, port=free_port(), training=True, log=lambda _: None)
    try:
        session = _FakeSession()
        viewer.set_paused(True)
        threading.Timer(0.5, viewer.set_paused, args=(False,)).start()
        start = time.monotonic()
        viewer.after_step(session, {})
        assert time.monotonic() - start >= 0.45 and not viewer.paused
        viewer.set_paused(True)
        session.stop = True  # Ctrl-C while paused: the loop must get control back
        start = time.monotonic()
        viewer.after_step(session, {})
        assert time.monotonic() - start < 0.5
    finally:
        viewer.close()


def test_idle_view_is_refreshed_only_within_the_budget(nerf_view):
    viewer = Viewer(nerf_view, port=free_port(), training=True, log=lambda _: None)
    try:
        client = type("H", (), {"client_id": 0})()
        from ngp.viewer.server import _Client

        now = time.perf_counter()
        c = _Client(client, camera=nerf_view.home, canvas=(32, 24), version=1, shown_version=1, shown_pixels=192,
                    shown_model=0, shown_at=0.0, moved_at=now - 1.0)
        viewer._clients[0] = c
        # just moved: refined to the canvas whatever the budget
        assert viewer._next_job(now, refresh_allowed=False)[0] is c
        c.moved_at = now - 60  # long at rest: refining and refreshing wait for the budget
        assert viewer._next_job(now, refresh_allowed=False) is None
        c.shown_pixels = 32 * 24
        viewer.model_version = 5  # training moved on: the resting view is stale
        assert viewer._next_job(now, refresh_allowed=False) is None
        assert viewer._next_job(now, refresh_allowed=True)[0] is c
        c.version = 2  # a camera move is served whatever the budget, coarse
        client_job, seconds = viewer._next_job(now, refresh_allowed=False)
        assert client_job is c and seconds <= 2 * COARSE_SECONDS
    finally:
        viewer.close()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from ngp.image.trainer import fit_image
    import imageio.v3 as iio

    folder = tmp_path_factory.mktemp("image_run")
    yy, xx = np.mgrid[0:48, 0:64]
    picture = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    iio.imwrite(folder / "picture.png", picture)
    config = {"encoding": {"otype": "HashGrid", "n_levels": 4, "log2_hashmap_size": 12, "base_resolution": 4},
              "network": {"otype": "FullyFusedMLP", "n_neurons": 16, "n_hidden_layers": 1}}
    fit_image(folder / "picture.png", folder / "run", steps=30, config=config, progress=False)
    return folder / "run"


def test_training_with_a_viewer_serves_frames_and_progress(image_run, tmp_path):
    from ngp.image.trainer import build_image_task
    from ngp.train.session import TrainRequest, ViewerAddress, train_run

    port = free_port()
    config = json.loads((image_run / "checkpoint" / "checkpoint.json").read_text())["config"]
    config["training"] = {k: v for k, v in config["training"].items() if k in ("data",)}
    request = TrainRequest(out=tmp_path / "run", config=config, overrides={"steps": 100_000, "seconds": 30},
                           progress=False, viewer=ViewerAddress(port=port))
    result = {}
    thread = threading.Thread(target=lambda: result.update(train_run("image", build_image_task, request)))
    thread.start()
    try:
        client = _connect_when_up(port)
        client.send_camera([1, 0, 0, 0], [1.0, 0.5, -2.0], 0.8, 32, 24)
        frame = client.next_frame(timeout=30)
        assert frame.ndim == 3 and frame.std() > 1  # the images, not a blank
        status = client.wait_for(lambda m: m["type"] == "GuiUpdateMessage" and "step" in json.dumps(m, default=str),
                                 timeout=30)
        assert "**step**" in json.dumps(status, default=str)
        client.close()
    finally:
        thread.join(timeout=120)
    assert result["steps"] > 0 and (tmp_path / "run" / "metrics.json").is_file()


def _connect_when_up(port: int, timeout: float = 60) -> ViserTestClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ViserTestClient(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------- ngp view
def test_view_from_run_knows_each_primitive(image_run, tmp_path):
    view = view_from_run(image_run, "cpu", log=lambda _: None)
    assert isinstance(view, ImageView) and view.target is not None and view.aspect == pytest.approx(64 / 48)
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "checkpoint.json").write_text(json.dumps({"primitive": "volume"}))
    with pytest.raises(ValueError, match="names no known primitive"):
        view_from_run(tmp_path)


def test_ngp_view_errors_are_one_line():
    runner = CliRunner()
    result = runner.invoke(app, ["view", "/nonexistent/run"])
    assert result.exit_code == 1 and "run folder not found: /nonexistent/run" in result.output
    result = runner.invoke(app, ["view", "/nonexistent/run", "--port", "70000"])
    assert result.exit_code == 1 and "--port must be in 1..65535" in result.output


def test_clicking_a_training_camera_moves_the_browser_there(served, nerf_view):
    viewer, client = served
    client.send_camera([1, 0, 0, 0], [0.5, 0.5, -2.0], 0.8, 32, 24)
    deadline = time.monotonic() + 10
    while not viewer.n_clients and time.monotonic() < deadline:
        time.sleep(0.05)
    handle = next(iter(viewer._clients.values())).handle
    frame = nerf_view.frames()[2]
    viewer.jump_to(handle, frame.camera)  # what a click on the frustum does
    moved = client.wait_for(lambda m: m["type"] == "SetCameraPositionMessage" and not m["initial"])
    target = client.wait_for(lambda m: m["type"] == "SetCameraLookAtMessage" and not m["initial"])
    np.testing.assert_allclose(moved["position"], frame.camera.position, atol=1e-5)
    axis = np.asarray(target["look_at"]) - frame.camera.position
    np.testing.assert_allclose(axis / np.linalg.norm(axis), frame.camera.forward, atol=1e-5)

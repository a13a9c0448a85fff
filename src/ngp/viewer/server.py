"""The live viewer: a viser web server that renders a :mod:`view <ngp.viewer.views>` for each browser.

Open the printed URL in a browser (over SSH: ``ssh -L 8080:localhost:8080 host``). The server binds
``127.0.0.1`` unless another ``host`` is given: a trained model and its photos are nobody else's business.

Responsiveness on a CPU comes from the resolution, not the renderer: while the camera moves, each
frame is rendered with as many pixels as the measured rendering rate allows in :data:`COARSE_SECONDS`;
once the camera rests, the same view is re-rendered with 4x the pixels each time, up to the browser's
canvas (at most :data:`MAX_PIXELS`).

Two ways to drive it, both single-threaded for the model (viser's own threads only record cameras):

* :meth:`Viewer.serve_forever` renders whenever a browser asks (``ngp view RUN``);
* :meth:`Viewer.after_step`, called by the training loop between steps (``--viewer``), renders under a
  time budget: a camera move is answered at once and refined for :data:`INTERACTIVE_SECONDS`; beyond
  that (nobody moving a camera) it renders at most ``budget`` of the wall time (the model changes, so
  it refreshes what it shows); and it holds training while "Pause training" is pressed.

Example::

    >>> viewer = Viewer(view_from_run("runs/builtin"), port=8080)
    >>> viewer.serve_forever()          # Ctrl-C to stop
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ngp.viewer.camera import ViewCamera

__all__ = ["COARSE_SECONDS", "MAX_PIXELS", "Viewer", "check_host", "frame_size"]

#: Rendering time of a frame while the camera moves: what a user feels as responsiveness.
COARSE_SECONDS = 0.1
#: The camera counts as resting this long after its last move; refinement starts then.
SETTLE_SECONDS = 0.15
#: Most pixels rendered for a frame (a full-HD canvas would take minutes of CPU per refined view).
MAX_PIXELS = 1280 * 720
MIN_PIXELS = 32 * 24
#: During training, a resting view is re-rendered this often (the model has changed meanwhile).
REFRESH_SECONDS = 2.0
#: Share of the wall time the viewer may render during training when nobody moves a camera.
DEFAULT_BUDGET = 0.08
#: During training, the longest a frame may be planned to take (training waits for it).
TRAINING_FRAME_SECONDS = 0.5
#: For this long after a camera move, refining the new view is not held to the budget: the user is
#: looking at it and waiting for the sharp picture.
INTERACTIVE_SECONDS = 5.0
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_host(host: str, port: int) -> None:
    """Refuse an invalid port and say so when the server will be reachable from other machines."""
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}")
    if not host:
        raise ValueError("--host must not be empty (use 127.0.0.1 for this machine only)")


def frame_size(canvas: tuple[int, int], pixels: float) -> tuple[int, int]:
    """``(width, height)`` of a frame of about ``pixels`` pixels (at least :data:`MIN_PIXELS`) with the
    canvas's aspect ratio; the canvas itself (scaled down to :data:`MAX_PIXELS`) when that is fewer."""
    width, height = canvas
    full = min(MAX_PIXELS, width * height)
    if pixels >= full:
        scale = min(1.0, math.sqrt(MAX_PIXELS / (width * height)))
        return max(1, int(width * scale)), max(1, int(height * scale))
    pixels = max(MIN_PIXELS, pixels)
    aspect = width / height
    w = max(1, min(width, round(math.sqrt(pixels * aspect))))
    return w, max(1, min(height, round(w / aspect)))


@dataclass
class _Client:
    """One browser: its camera, canvas size and what it has been sent."""

    handle: Any
    camera: ViewCamera | None = None
    canvas: tuple[int, int] = (640, 480)
    version: int = 0  # bumped on every camera move or mode change
    moved_at: float = 0.0
    shown_version: int = -1  # the version of the last frame sent
    shown_pixels: int = 0
    shown_model: int = -1  # the model version (training step) of the last frame sent
    shown_at: float = 0.0


@dataclass
class _Stats:
    """What the status panel shows."""

    lines: dict[str, str] = field(default_factory=dict)
    render: str = ""


class Viewer:
    """A viser server showing ``view`` to every connected browser.

    Args:
        view: what to show (:func:`ngp.viewer.views.view_from_run` / ``view_from_task``).
        host, port: where to listen (default: this machine only).
        training: show training progress and a pause button (the loop calls :meth:`after_step`).
        budget: share of wall time for rendering during training while no camera moves.
        log: where the URL is printed.
    """

    def __init__(self, view, host: str = "127.0.0.1", port: int = 8080, training: bool = False,
                 budget: float = DEFAULT_BUDGET, log: Callable[[str], None] = print):
        import viser

        check_host(host, port)
        self.view, self.training, self.budget = view, training, budget
        self.mode = view.modes[0]
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._rates: dict[str, float] = {}  # pixels per second, per mode
        self.paused = False
        self.model_version = 0
        self.render_seconds = 0.0
        self.idle_render_seconds = 0.0  # what the budget counts: renders nobody asked for by moving
        self.frames_sent = 0
        self._started = time.perf_counter()
        self._stats = _Stats()
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.host, self.port = host, self.server.get_port()
        self.server.scene.set_up_direction(tuple(float(v) for v in view.up))
        self._set_initial_camera(view.home)
        self._add_scene()
        self._add_gui()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        where = "this machine only" if host in LOCAL_HOSTS else "REACHABLE FROM OTHER MACHINES"
        log(f"viewer: {self.url}  ({where}; over SSH: ssh -L {self.port}:localhost:{self.port} HOST)")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- scene and panel ----------------------------------------------------------------------------
    def _add_scene(self) -> None:
        scene, size = self.server.scene, self.view.size
        self._frustums = []
        for i, frame in enumerate(self.view.frames()):
            wxyz, position = frame.camera.viser_pose()
            handle = scene.add_camera_frustum(f"/training_cameras/{i:04d}", fov=frame.camera.fov_y,
                                              aspect=frame.aspect, scale=0.04 * size, image=frame.thumbnail,
                                              format="jpeg", wxyz=wxyz, position=position)
            handle.on_click(lambda event, cam=frame.camera: self.jump_to(event.client, cam))
            self._frustums.append(handle)
        self._points = None
        mesh = self.view.mesh
        self._mesh = scene.add_mesh_trimesh("/mesh", mesh, visible=False) if mesh is not None else None

    def _add_gui(self) -> None:
        gui = self.server.gui
        self._status = gui.add_markdown("starting ...")
        show = gui.add_dropdown("Show", self.view.modes, initial_value=self.mode)
        show.on_update(lambda _: self._set_mode(show.value))
        if self._frustums:
            cams = gui.add_checkbox("Training cameras", True)
            cams.on_update(lambda _: [setattr(f, "visible", cams.value) for f in self._frustums])
        if self.view.points is not None:
            self._grid_box = gui.add_checkbox("Occupancy grid", False, hint="occupied cells of the density grid")
            self._grid_box.on_update(lambda _: self._show_points(self._grid_box.value))
        if self._mesh is not None:
            mesh_box = gui.add_checkbox("Mesh (mesh.ply)", False)
            mesh_box.on_update(lambda _: setattr(self._mesh, "visible", mesh_box.value))
        home = gui.add_button("Reset view")
        home.on_click(lambda event: self.jump_to(event.client, self.view.home))
        if self.training:
            self._pause = gui.add_button("Pause training")
            self._pause.on_click(lambda _: self.set_paused(not self.paused))

    def _show_points(self, visible: bool) -> None:
        if visible:
            points = self.view.points()
            size = self.view.size / 400
            self._points = self.server.scene.add_point_cloud("/occupancy", points.astype(np.float32),
                                                             colors=(255, 140, 0), point_size=size)
        elif self._points is not None:
            self._points.visible = False

    def _set_mode(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            for client in self._clients.values():
                client.version += 1
                client.moved_at = 0.0  # not a move: refine straight away
        self._wake.set()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if self.training:
            self._pause.label = "Resume training" if paused else "Pause training"

    def _orbit_target(self, camera: ViewCamera) -> np.ndarray:
        """The point a browser orbits about when at ``camera``: on its axis, as far as the scene's centre."""
        centre = getattr(self.view, "center", camera.position + camera.forward)
        return camera.position + camera.forward * max(float(np.linalg.norm(camera.position - centre)), 1e-3)

    def _set_initial_camera(self, camera: ViewCamera) -> None:
        initial = self.server.initial_camera
        initial.position = camera.position
        initial.look_at = self._orbit_target(camera)
        initial.up = tuple(float(v) for v in self.view.up)
        initial.fov = camera.fov_y

    def jump_to(self, client_handle, camera: ViewCamera) -> None:
        """Move a browser's camera to ``camera`` (a training camera clicked, or home)."""
        wxyz, position = camera.viser_pose()
        with client_handle.atomic():
            client_handle.camera.fov = camera.fov_y
            client_handle.camera.position = position
            client_handle.camera.look_at = self._orbit_target(camera)
            client_handle.camera.wxyz = wxyz

    # -- clients ------------------------------------------------------------------------------------
    def _connect(self, handle) -> None:
        # viser calls this on the browser's first camera message and may run camera callbacks before
        # this one returns: take that first camera here, then follow the updates
        client = _Client(handle)
        with self._lock:
            self._clients[handle.client_id] = client
        handle.camera.on_update(lambda cam: self._camera_moved(client, cam))
        self._camera_moved(client, handle.camera)

    def _disconnect(self, handle) -> None:
        with self._lock:
            self._clients.pop(handle.client_id, None)

    def _camera_moved(self, client: _Client, cam) -> None:
        camera = ViewCamera.from_viser(cam.wxyz, cam.position, cam.fov)
        width, height = int(getattr(cam, "image_width", 0) or 0), int(getattr(cam, "image_height", 0) or 0)
        with self._lock:
            canvas = (width, height) if width > 0 and height > 0 else client.canvas
            if client.camera is not None and canvas == client.canvas and \
                    np.array_equal(camera.c2w, client.camera.c2w) and camera.fov_y == client.camera.fov_y:
                return  # the same camera again (a browser repeats itself): nothing to redraw
            client.camera, client.canvas = camera, canvas
            client.version += 1
            client.moved_at = time.perf_counter()
        self._wake.set()

    @property
    def n_clients(self) -> int:
        return len(self._clients)

    # -- scheduling ---------------------------------------------------------------------------------
    def _next_job(self, now: float, refresh_allowed: bool,
                  max_seconds: float = math.inf) -> tuple[_Client, float] | None:
        """The most urgent frame to render: ``(client, seconds it may take)``, or None.

        A camera that moved gets a coarse frame; a resting one a frame with 4x the pixels of the last,
        until it reaches the canvas (within :data:`INTERACTIVE_SECONDS` of a move whatever the budget,
        later only if ``refresh_allowed``); during training, a finished view is refreshed every
        :data:`REFRESH_SECONDS` at the resolution that renders in a few tenths of a second. No frame is
        planned to take longer than ``max_seconds``: during training, refinement stops where a frame
        would hold up training too long (an untrained NeRF renders slowly: nothing is opaque yet).
        """
        best = None
        with self._lock:
            for c in self._clients.values():
                if c.camera is None:
                    continue
                full = self._full_pixels(c)
                since_move = now - c.moved_at
                if c.shown_version != c.version:
                    job = (0, c, COARSE_SECONDS if since_move < SETTLE_SECONDS else 2 * COARSE_SECONDS)
                elif c.shown_pixels < full and since_move >= SETTLE_SECONDS and \
                        (refresh_allowed or since_move < INTERACTIVE_SECONDS) and \
                        min(4 * c.shown_pixels, max_seconds * self._rate()) > 1.2 * c.shown_pixels:
                    job = (1, c, min(4 * c.shown_pixels / self._rate(), max_seconds))
                elif (self.training and refresh_allowed and c.shown_model != self.model_version
                      and now - c.shown_at >= REFRESH_SECONDS):
                    job = (2, c, min(3 * COARSE_SECONDS, c.shown_pixels / self._rate()))
                else:
                    continue
                if best is None or job[0] < best[0]:
                    best = job
        return None if best is None else (best[1], best[2])

    def _rate(self) -> float:
        return self._rates.get(self.mode, 30_000.0)  # a CPU NeRF renders some 10^4..10^5 pixels per second

    def _full_pixels(self, client: _Client) -> int:
        return math.prod(frame_size(client.canvas, math.inf))

    def render_once(self, refresh_allowed: bool = True, max_seconds: float = math.inf) -> bool:
        """Render and send the most urgent frame (planned to take at most ``max_seconds``), if any;
        True if one was sent."""
        job = self._next_job(time.perf_counter(), refresh_allowed, max_seconds)
        if job is None:
            return False
        client, seconds = job
        budgeted = client.shown_version == client.version and \
            time.perf_counter() - client.moved_at >= INTERACTIVE_SECONDS  # an idle refresh or refinement
        with self._lock:
            camera, version, canvas, mode = client.camera, client.version, client.canvas, self.mode
        width, height = frame_size(canvas, seconds * self._rate())
        start = time.perf_counter()
        image = self.view.render(camera, width, height, mode)
        took = time.perf_counter() - start
        rate = width * height / max(took, 1e-4)
        old = self._rates.get(mode)
        self._rates[mode] = rate if old is None else math.exp(0.5 * math.log(old) + 0.5 * math.log(rate))
        self.render_seconds += took
        if budgeted:
            self.idle_render_seconds += took
        with warnings.catch_warnings():  # a browser that closed meanwhile just misses the frame
            warnings.filterwarnings("ignore", "Queued a BackgroundImageMessage on a closed connection")
            client.handle.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
        with self._lock:
            client.shown_version, client.shown_pixels = version, width * height
            client.shown_model, client.shown_at = self.model_version, time.perf_counter()
        self.frames_sent += 1
        self._stats.render = f"{width}×{height} in {took:.2f} s"
        self._update_status()
        return True

    # -- driving it -----------------------------------------------------------------------------------
    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Render on demand until ``stop`` is set (or Ctrl-C)."""
        stop = stop or threading.Event()
        self._update_status()
        while not stop.is_set():
            if not self.render_once():
                self._wake.wait(0.05)
                self._wake.clear()

    def after_step(self, session, figures: dict[str, float]) -> None:
        """Between training steps: show progress, render within the budget, and hold while paused."""
        self.model_version = session.state.step
        self._stats.lines = _training_lines(session, figures)
        if self.n_clients:
            elapsed = time.perf_counter() - self._started
            self.render_once(refresh_allowed=self.idle_render_seconds <= self.budget * elapsed,
                             max_seconds=TRAINING_FRAME_SECONDS)
        if self.paused:
            self._update_status()
            while self.paused and not session.stopping():
                if not self.render_once():
                    self._wake.wait(0.05)
                    self._wake.clear()
        elif session.state.step % 10 == 0:
            self._update_status()

    def _update_status(self) -> None:
        lines = [f"**{k}** {v}" for k, v in self._stats.lines.items()]
        if self.paused:
            lines.insert(0, "**training paused**")
        if self._stats.render:
            lines.append(f"**frame** {self._stats.render}")
        self._status.content = "  \n".join(lines) or "ready"

    def close(self) -> None:
        self.server.stop()


def _training_lines(session, figures: dict[str, float]) -> dict[str, str]:
    state = session.state
    lines = {"step": f"{state.step:,}", "time": f"{state.seconds:.0f} s"}
    if state.history.get("loss"):
        lines["loss"] = f"{state.history['loss'][-1]:.4g}"
    for key, value in figures.items():  # the step's own figures: measured on the batch just trained on
        if "psnr" in key and isinstance(value, (int, float)):
            lines[key.replace("_", " ") + " (training batch)"] = f"{value:.2f} dB"
    if state.evals:
        last = state.evals[-1]
        for key, value in last.items():
            if "psnr" in key and isinstance(value, (int, float)):
                lines[key.replace("_", " ")] = f"{value:.2f} dB (at {last['seconds']:.0f} s)"
    if state.seconds > 0:
        lines["samples/s"] = f"{state.samples / state.seconds / 1e3:,.0f} k"
    return lines

"""A built-in NeRF test scene, ray traced at run time (nothing downloaded).

:func:`make_builtin_scene` writes a data set in the Blender / NeRF-synthetic format
(``transforms_{train,val,test}.json`` + RGBA PNGs), so every loader and tool that reads
NeRF-synthetic scenes reads it. The scene, in the Blender world frame (z up, metres-ish):

* a ground disc (radius 1.4, z = 0) with a checkerboard and thin rings;
* a sphere with a longitude/latitude checker and a glossy highlight;
* a box rotated about z with a fine checker (cells of 0.05, about 3.5 pixels at 200x200):
  the high frequency a bad NeRF blurs;
* a vertical cylinder with stripes and bands, and a flat cap.

Shading: Lambert + ambient + Blinn-Phong specular (view-dependent) from one directional light,
with hard shadows. Rays that miss everything are transparent (alpha 0, rgb 0), as Blender renders
NeRF-synthetic. Cameras sit on the upper hemisphere at distance 4 looking at the origin,
``camera_angle_x`` = 0.6911 as NeRF-synthetic. Everything lies within ``[-1.45, 1.45]^3``, so
instant-ngp's scale 0.33 maps it into the unit cube (``aabb_scale`` 1).

Generation is crash-safe: the scene is rendered into a hidden sibling folder and renamed into
place when complete; :func:`builtin_scene_is_complete` tells a finished scene from anything else.

Example::

    >>> path = make_builtin_scene("/tmp/scene", n_train=100, n_test=20, resolution=200)
    >>> ds = ngp.nerf.datasets.load_dataset(path)
    >>> builtin_scene_is_complete(path, resolution=200)
    True

Command line: ``python -m ngp.nerf.builtin_scene OUT [--n-train 100 --n-test 20 --resolution 200]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["make_builtin_scene", "builtin_scene_is_complete", "render_rays", "render_image", "camera_poses",
           "CAMERA_ANGLE_X"]

CAMERA_ANGLE_X = 0.6911112070083618  # NeRF-synthetic's
CAMERA_DISTANCE = 4.0
_LIGHT = np.array([0.45, -0.55, 0.70]) / np.linalg.norm([0.45, -0.55, 0.70])
_AMBIENT = 0.25
_INF = np.inf

# primitives: (parameters), chosen so that everything rests on the ground disc
_DISC_RADIUS = 1.4
_SPHERE_C, _SPHERE_R = np.array([-0.55, -0.35, 0.45]), 0.45
_BOX_C, _BOX_HALF, _BOX_ANGLE = np.array([0.5, -0.45, 0.3]), np.array([0.3, 0.3, 0.3]), math.radians(30)
_CYL_C, _CYL_R, _CYL_H = np.array([0.15, 0.6]), 0.3, 0.9
_BOX_CELL = 0.05


# ------------------------------------------------------------------------------- intersections
def _hit_disc(o, d):
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -o[:, 2] / d[:, 2]
    p = o + t[:, None] * d
    ok = (d[:, 2] < 0) & (t > 0) & (p[:, 0] ** 2 + p[:, 1] ** 2 < _DISC_RADIUS**2)
    return np.where(ok, t, _INF)


def _dot(a, b):
    # explicit columns: numpy's reduction over a length-3 axis is several times slower
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def _hit_sphere(o, d):
    oc = o - _SPHERE_C
    b = _dot(oc, d)
    c = _dot(oc, oc) - _SPHERE_R**2
    disc = b * b - c
    sq = np.sqrt(np.maximum(disc, 0))
    t = np.where(-b - sq > 0, -b - sq, -b + sq)
    return np.where((disc > 0) & (t > 0), t, _INF)


def _box_frame(o, d):
    """Ray in the box's local frame (rotation about z by -angle, centred)."""
    c, s = math.cos(_BOX_ANGLE), math.sin(_BOX_ANGLE)
    rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])  # world -> local
    return (o - _BOX_C) @ rot.T, d @ rot.T, rot


def _hit_box(o, d):
    lo, ld, _ = _box_frame(o, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / ld
        t0 = (-_BOX_HALF - lo) * inv
        t1 = (_BOX_HALF - lo) * inv
    tmin, tmax = np.minimum(t0, t1), np.maximum(t0, t1)
    # fmax/fmin skip the NaN of a ray parallel to a slab that starts exactly on it
    tnear = np.fmax(np.fmax(tmin[:, 0], tmin[:, 1]), tmin[:, 2])
    tfar = np.fmin(np.fmin(tmax[:, 0], tmax[:, 1]), tmax[:, 2])
    t = np.where(tnear > 0, tnear, tfar)
    return np.where((tnear <= tfar) & (t > 0), t, _INF)


def _hit_cylinder(o, d):
    ox, oy = o[:, 0] - _CYL_C[0], o[:, 1] - _CYL_C[1]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = ox * d[:, 0] + oy * d[:, 1]
    c = ox**2 + oy**2 - _CYL_R**2
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        sq = np.sqrt(np.maximum(disc, 0))
        t_side = np.where((-b - sq) / a > 0, (-b - sq) / a, (-b + sq) / a)
        z = o[:, 2] + t_side * d[:, 2]
        t_side = np.where((disc > 0) & (t_side > 0) & (z > 0) & (z < _CYL_H), t_side, _INF)
        t_cap = (_CYL_H - o[:, 2]) / d[:, 2]
    p = o + t_cap[:, None] * d
    in_cap = (p[:, 0] - _CYL_C[0]) ** 2 + (p[:, 1] - _CYL_C[1]) ** 2 < _CYL_R**2
    t_cap = np.where(in_cap & (t_cap > 0), t_cap, _INF)
    return np.minimum(t_side, t_cap)


_HITS = (_hit_disc, _hit_sphere, _hit_box, _hit_cylinder)


def _first_hit(o, d):
    ts = np.stack([f(o, d) for f in _HITS])
    which = ts.argmin(0)
    return ts[which, np.arange(len(o))], which


# ---------------------------------------------------------------------------- surfaces, shading
def _checker(u, v):
    return (np.floor(u).astype(np.int64) + np.floor(v).astype(np.int64)) & 1


def _surface(k, p, d):
    """Normal ``[m,3]``, albedo ``[m,3]``, specular strength and exponent for primitive ``k``."""
    m = len(p)
    if k == 0:  # ground disc: checker + thin rings
        n = np.tile([0.0, 0.0, 1.0], (m, 1))
        chk = _checker(p[:, 0] / 0.25, p[:, 1] / 0.25)[:, None]
        albedo = np.where(chk, [0.85, 0.82, 0.75], [0.30, 0.35, 0.45])
        r = np.hypot(p[:, 0], p[:, 1])
        ring = (np.abs((r / 0.2) % 1.0 - 0.5) < 0.06)[:, None]
        return n, np.where(ring, [0.75, 0.15, 0.10], albedo), 0.1, 20.0
    if k == 1:  # sphere: longitude / latitude checker, glossy
        n = (p - _SPHERE_C) / _SPHERE_R
        lon = np.arctan2(n[:, 1], n[:, 0]) / (2 * np.pi) * 16
        lat = np.arccos(np.clip(n[:, 2], -1, 1)) / np.pi * 8
        chk = _checker(lon, lat)[:, None]
        return n, np.where(chk, [0.90, 0.75, 0.10], [0.80, 0.10, 0.15]), 0.6, 60.0
    if k == 2:  # box: fine checker on every face
        lo, _, rot = _box_frame(p, d)
        axis = np.abs(lo / _BOX_HALF).argmax(-1)
        n_local = np.zeros_like(lo)
        n_local[np.arange(m), axis] = np.sign(lo[np.arange(m), axis])
        n = n_local @ rot  # local -> world (rot is orthonormal)
        # the two face coordinates: drop the normal axis
        u = np.where(axis == 0, lo[:, 1], lo[:, 0])
        v = np.where(axis == 2, lo[:, 1], lo[:, 2])
        chk = _checker(u / _BOX_CELL, v / _BOX_CELL)[:, None]
        return n, np.where(chk, [0.95, 0.95, 0.90], [0.10, 0.45, 0.20]), 0.3, 30.0
    # cylinder: stripes around, bands along; concentric rings on the cap
    q = p[:, :2] - _CYL_C
    on_cap = p[:, 2] > _CYL_H - 1e-6
    n = np.where(on_cap[:, None], [0.0, 0.0, 1.0], np.c_[q / _CYL_R, np.zeros(m)])
    angle = np.arctan2(q[:, 1], q[:, 0]) / (2 * np.pi) * 24
    band = np.floor(p[:, 2] / 0.15).astype(np.int64) % 3
    stripe = (np.floor(angle).astype(np.int64) & 1)[:, None]
    side = np.where(stripe, [0.15, 0.30, 0.85], [0.92, 0.92, 0.95])
    side = np.where((band == 2)[:, None], [0.95, 0.55, 0.10], side)
    cap = np.where((np.floor(np.hypot(q[:, 0], q[:, 1]) / 0.06).astype(np.int64) & 1)[:, None],
                   [0.15, 0.30, 0.85], [0.92, 0.92, 0.95])
    return n, np.where(on_cap[:, None], cap, side), 0.4, 40.0


def render_rays(origins: np.ndarray, directions: np.ndarray, chunk: int = 1 << 14) -> np.ndarray:
    """Trace rays in the scene's (Blender) world frame.

    Args:
        origins, directions: ``[R, 3]`` arrays (directions unit length).
        chunk: rays traced at once (small enough for the temporaries to stay in cache).

    Returns:
        ``[R, 4]`` float RGBA in [0, 1]; alpha is 1 on a hit, 0 (with rgb 0) on a miss.
    """
    o = np.broadcast_to(np.asarray(origins, dtype=np.float64), np.shape(directions))
    d = np.asarray(directions, dtype=np.float64)
    return np.concatenate([_trace(o[i:i + chunk], d[i:i + chunk]) for i in range(0, len(d), chunk)]
                          or [np.zeros((0, 4))])


def _trace(o: np.ndarray, d: np.ndarray) -> np.ndarray:
    o, d = np.ascontiguousarray(o), np.ascontiguousarray(d)
    t, which = _first_hit(o, d)
    rgba = np.zeros((len(o), 4))
    hit = np.isfinite(t)
    for k in range(len(_HITS)):
        sel = np.flatnonzero(hit & (which == k))
        if len(sel) == 0:
            continue
        p = o[sel] + t[sel, None] * d[sel]
        n, albedo, ks, shininess = _surface(k, p, d[sel])
        # face the viewer (the ground disc and cap are one-sided anyway)
        n = np.where((_dot(n, d[sel]) > 0)[:, None], -n, n)
        # shadow ray, offset along the normal so a surface does not shadow itself
        t_shadow, _ = _first_hit(p + 1e-4 * n, np.broadcast_to(_LIGHT, p.shape))
        lit = ~np.isfinite(t_shadow)
        n_dot_l = np.clip(n @ _LIGHT, 0, None) * lit
        h = _LIGHT - d[sel]
        h /= np.linalg.norm(h, axis=-1, keepdims=True)
        spec = ks * np.clip(_dot(n, h), 0, None) ** shininess * (n_dot_l > 0)
        rgba[sel, :3] = albedo * (_AMBIENT + (1 - _AMBIENT) * n_dot_l[:, None]) + spec[:, None]
        rgba[sel, 3] = 1.0
    rgba[:, :3] = np.clip(rgba[:, :3], 0, 1)
    return rgba


# ---------------------------------------------------------------------------------------- cameras
def camera_poses(n: int, seed: int, distance: float = CAMERA_DISTANCE,
                 min_elevation_deg: float = 10.0, max_elevation_deg: float = 80.0) -> np.ndarray:
    """``[n, 4, 4]`` Blender camera-to-world poses on the upper hemisphere, looking at the origin.

    Directions are uniform in area between the two elevations (random azimuth, ``seed``).
    """
    rng = np.random.default_rng(seed)
    z = rng.uniform(math.sin(math.radians(min_elevation_deg)),
                    math.sin(math.radians(max_elevation_deg)), n)
    phi = rng.uniform(0, 2 * np.pi, n)
    r = np.sqrt(1 - z * z)
    centres = distance * np.stack([r * np.cos(phi), r * np.sin(phi), z], -1)
    forward = -centres / np.linalg.norm(centres, axis=-1, keepdims=True)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    up = np.cross(right, forward)
    poses = np.tile(np.eye(4), (n, 1, 1))
    # OpenGL camera: columns x = right, y = up, z = backwards (the camera looks down -z)
    poses[:, :3, 0], poses[:, :3, 1], poses[:, :3, 2], poses[:, :3, 3] = right, up, -forward, centres
    return poses


def render_image(pose: np.ndarray, resolution: int, supersample: int = 2,
                 camera_angle_x: float = CAMERA_ANGLE_X) -> np.ndarray:
    """``[H, W, 4]`` uint8 straight-alpha RGBA image from a Blender pose (square pixels, H = W).

    ``supersample**2`` rays per pixel on a regular sub-pixel grid are averaged with alpha weighting (anti-aliasing).
    """
    w = h = resolution
    focal = 0.5 * w / math.tan(0.5 * camera_angle_x)
    s = supersample
    sub = (np.arange(s) + 0.5) / s
    # pixel-major: the s sub-pixel positions of each pixel are adjacent (reshaped back below)
    xs = (np.arange(w)[:, None] + sub[None, :]).reshape(-1)
    ys = (np.arange(h)[:, None] + sub[None, :]).reshape(-1)
    px, py = np.meshgrid((xs - w / 2) / focal, -(ys - h / 2) / focal)  # [h*s, w*s]
    rot = pose[:3, :3]
    # camera-space direction (x, y, -1) rotated to world: x * right + y * up - backwards
    dirs = px.reshape(-1, 1) * rot[:, 0] + py.reshape(-1, 1) * rot[:, 1] - rot[:, 2]
    dirs /= np.sqrt(_dot(dirs, dirs))[:, None]
    rgba = render_rays(pose[:3, 3], dirs)
    # average the s x s samples of each pixel, colour weighted by coverage
    rgba[:, :3] *= rgba[:, 3:]
    rgba = rgba.reshape(h, s, w, s, 4).mean(axis=(1, 3))
    alpha = rgba[..., 3]
    rgb = rgba[..., :3] / np.maximum(alpha, 1e-8)[..., None]
    out = np.concatenate([rgb, alpha[..., None]], -1)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- writing
MARKER = ".builtin_scene.json"  # written last: its presence means the scene is complete
SCENE_VERSION = 1  # bump when the renderer changes, so that older scenes are regenerated
_PARAMS = ("n_train", "n_test", "n_val", "resolution", "seed", "supersample")
_SPLITS = ("train", "val", "test")
_OWN_ENTRIES = {MARKER, *_SPLITS, *(f"transforms_{s}.json" for s in _SPLITS)}


def builtin_scene_is_complete(path: str | Path, **params) -> bool:
    """True when ``path`` holds a built-in scene whose generation finished.

    Args:
        path: the folder given to :func:`make_builtin_scene`.
        **params: any of :func:`make_builtin_scene`'s parameters (``n_train``, ``resolution``, ...):
            when given, the scene must also have been made with these values.

    Example::

        >>> if not builtin_scene_is_complete(data, resolution=200):
        ...     make_builtin_scene(data, resolution=200)
    """
    unknown = set(params) - set(_PARAMS)
    if unknown:
        raise ValueError(f"unknown built-in scene parameter(s) {sorted(unknown)}; known: {', '.join(_PARAMS)}")
    try:
        recorded = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):  # no marker (unfinished, or not a scene) or an unreadable one
        return False
    return (isinstance(recorded, dict) and recorded.get("version") == SCENE_VERSION
            and all(recorded.get(k) == v for k, v in params.items()))


def make_builtin_scene(out_dir: str | Path, n_train: int = 100, n_test: int = 20,
                       n_val: int = 10, resolution: int = 200, seed: int = 0,
                       supersample: int = 2) -> Path:
    """Render the built-in scene into ``out_dir`` in the Blender format; returns ``out_dir``.

    Splits use disjoint random camera sets (seeds ``seed``, ``seed + 1``, ``seed + 2`` for train,
    val, test). Images go to ``out_dir/{split}/r_{i}.png``; ``file_path`` has no extension, as
    NeRF-synthetic. 100 frames at 200x200 with 2x2 supersampling take a few seconds.

    The scene is rendered into a hidden sibling folder that is renamed to ``out_dir`` only when
    complete (with the marker :func:`builtin_scene_is_complete` checks written last), so a crash
    never leaves a partial scene that looks usable. An existing ``out_dir`` is replaced if it is
    empty or holds a (possibly partial) built-in scene; a complete one made with the same
    parameters is kept (the result would be the same files).

    Raises:
        FileExistsError: ``out_dir`` is a file, or a folder holding anything else (checked before
            rendering; nothing is touched).

    Example::

        >>> make_builtin_scene("/tmp/scene", n_train=10, n_test=2, n_val=2, resolution=64)
        PosixPath('/tmp/scene')
    """
    out = Path(os.path.abspath(out_dir))  # absolute: "." has no name or parent to rename within
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = dict(n_train=n_train, n_test=n_test, n_val=n_val, resolution=resolution, seed=seed,
                  supersample=supersample)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes a 0700 folder; the scene follows the umask
        for offset, (split, n) in enumerate(zip(_SPLITS, (n_train, n_val, n_test))):
            _write_split(tmp, split, camera_poses(n, seed + offset), resolution, supersample)
        (tmp / MARKER).write_text(json.dumps({"version": SCENE_VERSION, **params}, indent=2))
        # another process may have finished the same (deterministic) scene meanwhile: keep its files,
        # which a reader may already be using
        if not builtin_scene_is_complete(out, **params):
            _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return Path(out_dir)


def _write_split(root: Path, split: str, poses: np.ndarray, resolution: int, supersample: int) -> None:
    import imageio.v3 as iio

    (root / split).mkdir()
    frames = []
    for i, pose in enumerate(poses):
        iio.imwrite(root / split / f"r_{i}.png", render_image(pose, resolution, supersample))
        frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": pose.tolist()})
    meta = {"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}
    (root / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2))


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but nothing, an empty folder or a built-in scene (even partial)."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"cannot write the built-in scene to {out}: it is a file")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_ENTRIES) if out.is_dir() else []
    if foreign:
        raise FileExistsError(f"cannot write the built-in scene to {out}: the folder holds other files "
                              f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing an old ``out`` (renamed aside, then deleted)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rename(out, old / out.name)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ngp.nerf.builtin_scene",
                                     description="Render the built-in NeRF scene (Blender format).")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-val", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=200)
    parser.add_argument("--supersample", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    path = make_builtin_scene(a.out, a.n_train, a.n_test, a.n_val, a.resolution, a.seed, a.supersample)
    print(f"wrote {a.n_train}/{a.n_val}/{a.n_test} train/val/test frames to {path}")


if __name__ == "__main__":
    main()

"""``ngp nerf prepare``: posed NeRF data from a folder of photos or a video, by structure from motion.

The pipeline runs COLMAP through its Python bindings (pycolmap, on the CPU):

1. *Video only*: about ``frames`` frames spread evenly over the video; the video is cut into that
   many equal neighbourhoods of consecutive frames and the sharpest frame of each is kept
   (:func:`sharpness`: variance of the Laplacian), so motion-blurred frames are dropped.
2. *Features*: SIFT on every image (detected on a copy whose longest side is at most
   ``max_image_size``; keypoints are in full-resolution pixels), one camera shared by all images,
   COLMAP's ``OPENCV`` model (``fx fy cx cy k1 k2 p1 p2``) by default.
3. *Matching*: COLMAP's exhaustive pairs for up to 150 photos, its sequential pairs (each image
   with its next ones, by file name) for video frames and larger photo sets.
4. *Mapping*: COLMAP's incremental mapper; the model with the most registered images is kept,
   then bundle-adjusted once more with the principal point also refined (as instant-ngp's
   ``colmap2nerf.py`` does).
5. *Writing*, as instant-ngp's ``colmap2nerf.py`` orients a capture: the up direction is the mean
   of the cameras' up vectors, turned to ``+z``; the origin is the point the cameras look at (the
   mean of the closest points between pairs of optical axes, in front of both cameras, weighted by
   the squared sine of their angle); the scale puts the cameras 4 units from it on average.

The data set folder (``--out``), written whole or not at all (built beside it, then renamed)::

    DATA/transforms.json    instant-ngp's format: fl_x fl_y cx cy w h k1 k2 p1 p2, aabb_scale and a
                            camera-to-world transform_matrix per registered image (NeRF/OpenGL
                            camera axes: x right, y up, looking down -z; world z up)
    DATA/images/            the registered images (copies of the photos, or the extracted frames)
    DATA/points.ply         COLMAP's sparse points with their colours, in the world of the poses
    DATA/colmap/            database.db (features, matches) and sparse/0/ (the model, binary,
                            in COLMAP's own world frame), for users who want to go on with COLMAP

``aabb_scale`` is the smallest power of two whose box (instant-ngp's ``0.5 +- aabb_scale / 2`` after
its default scale 0.33) holds 98% of the sparse points.

Images are used as stored: neither COLMAP nor :func:`ngp.io.images.read_image` applies an EXIF
orientation tag, so a rotated phone photo is seen sideways by both, consistently.

Example::

    >>> result = prepare_scene("photos/", "data/mug", progress=False)
    >>> result.summary()
    'registered 52 of 52 images; mean reprojection error 0.61 px; 10233 sparse points; aabb_scale 4'
    >>> # then: ngp nerf train data/mug --out runs/mug
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from ngp.io.files import atomic_folder, write_json
from ngp.nerf.datasets import DEFAULT_SCALE

__all__ = ["prepare_scene", "PrepareResult", "PrepareError", "extract_frames", "sharpness", "orient_cameras",
           "look_at_point", "choose_aabb_scale", "MIN_IMAGES", "CAMERA_MODELS", "MATCHERS"]

#: Fewest images (or registered images) a data set is made from: one may be held out for validation
#: and two more are the least a reconstruction starts from.
MIN_IMAGES = 3
#: Above this many photos exhaustive matching (every pair) gives way to sequential matching.
EXHAUSTIVE_MAX = 150
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
#: COLMAP camera models whose parameters instant-ngp's transforms (k1 k2 p1 p2) can hold.
CAMERA_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL", "SIMPLE_RADIAL")
MATCHERS = ("auto", "exhaustive", "sequential")
#: colmap2nerf.py's "NeRF-sized" scene: the cameras' mean distance from the point they look at.
CAMERA_DISTANCE = 4.0
#: Fraction of the sparse points the chosen aabb holds (the rest: stray far-away points).
AABB_QUANTILE = 0.98
#: Matching runs in this many calls, so that its progress bar moves; each call costs about a second
#: more (COLMAP loads the features of every image it touches again), hence not more.
_MATCHING_CALLS = 8
_OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0])  # camera axes: y down / z forward -> y up / z backward


class PrepareError(ValueError):
    """Structure from motion could not pose the images (nothing, or too little, registered)."""


@dataclass
class PrepareResult:
    """What :func:`prepare_scene` wrote.

    Attributes:
        out: the data set folder (``transforms.json``, ``images/``, ``points.ply``, ``colmap/``).
        n_given: images given to structure from motion (photos, or frames taken from the video).
        registered, unregistered: image names (in ``out/images``) posed / not posed; only the
            registered ones are written.
        reprojection_error: mean reprojection error of the sparse points, in pixels.
        n_points: sparse points written to ``points.ply``.
        aabb_scale: the ``aabb_scale`` written.
        matcher: ``"exhaustive"`` or ``"sequential"``.
        source_frames: for a video, the index in the video of each image given (sorted), else None.
        seconds: wall time of the whole preparation.
    """

    out: Path
    n_given: int
    registered: list[str]
    unregistered: list[str]
    reprojection_error: float
    n_points: int
    aabb_scale: int
    matcher: str
    source_frames: list[int] | None = None
    seconds: float = 0.0

    @property
    def n_registered(self) -> int:
        return len(self.registered)

    def summary(self) -> str:
        """One line: registered / given, reprojection error, points, aabb_scale."""
        return (f"registered {self.n_registered} of {self.n_given} images; mean reprojection error "
                f"{self.reprojection_error:.2f} px; {self.n_points} sparse points; aabb_scale {self.aabb_scale}")


# ------------------------------------------------------------------------------------ entry point
def prepare_scene(input: str | Path, out: str | Path, frames: int = 100, matcher: str = "auto",
                  camera_model: str = "OPENCV", max_image_size: int = 1600, aabb_scale: int | None = None,
                  force: bool = False, seed: int = 0, progress: bool = True,
                  log: Callable[[str], None] = print) -> PrepareResult:
    """Pose the photos in folder ``input`` (or frames of the video file ``input``) and write the
    NeRF data set folder ``out`` (see the module doc for its layout).

    Args:
        input: a folder of JPEG/PNG photos (its top level; all of one size), or a video file.
        out: the data set folder to write; an existing non-empty one is replaced only with ``force``.
        frames: video only: about this many frames are taken (fewer if the video is shorter).
        matcher: ``"auto"`` (exhaustive for up to 150 photos, sequential for more and for video
            frames), ``"exhaustive"`` or ``"sequential"``.
        camera_model: one of :data:`CAMERA_MODELS` (COLMAP's names), shared by all images.
        max_image_size: features are detected on images scaled down to this longest side (pixels).
        aabb_scale: write this ``aabb_scale`` (a power of two, 1..128) instead of choosing it from
            the sparse points.
        seed: COLMAP's random seed.
        progress: show a progress bar for each stage; ``log`` gets the stage and summary lines.

    Returns:
        a :class:`PrepareResult` (``result.summary()`` is the line logged at the end).

    Raises:
        FileNotFoundError: ``input`` does not exist.
        FileExistsError: ``out`` exists and is not empty (without ``force``), or is a file.
        ValueError: not a folder of photos nor a readable video, fewer than :data:`MIN_IMAGES`
            images, images of different sizes or unreadable, bad options; checked before any
            expensive work. :class:`PrepareError` (a ValueError): nothing or fewer than
            :data:`MIN_IMAGES` images registered. Fewer registered than given is a warning.

    Example:
        >>> prepare_scene("clip.mp4", "data/clip", frames=120).summary()
        'registered 118 of 120 images; mean reprojection error 0.74 px; 20511 sparse points; aabb_scale 8'
    """
    import pycolmap

    start = time.monotonic()
    source, out = Path(input), Path(out)
    _check_options(frames, matcher, camera_model, max_image_size, aabb_scale)
    video = _is_video(source)
    photos = [] if video else _list_photos(source)
    _check_out(out, source, force)
    with _colmap_quiet(pycolmap), atomic_folder(out) as staging:
        images = staging / "images"
        images.mkdir()
        if video:
            log(f"extracting about {frames} frames from {source} (the sharpest of each stretch)")
            source_frames = extract_frames(source, images, frames, progress)
            names = sorted(p.name for p in images.iterdir())
        else:
            source_frames = None
            names = _copy_photos(photos, images)
        matcher = matcher if matcher != "auto" else "sequential" if video or len(names) > EXHAUSTIVE_MAX \
            else "exhaustive"
        model = _reconstruct(pycolmap, images, staging / "colmap", names, matcher, camera_model, max_image_size,
                             seed, progress, log)
        result = _write_scene(staging, model, names, source, aabb_scale, matcher, source_frames)
    result.out = out
    result.seconds = time.monotonic() - start
    log(f"{result.summary()}; wrote {out} in {result.seconds:.0f} s")
    return result


def _check_options(frames, matcher, camera_model, max_image_size, aabb_scale) -> None:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < MIN_IMAGES:
        raise ValueError(f"frames must be an integer >= {MIN_IMAGES}, got {frames!r}")
    if matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {matcher!r}")
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera model must be one of {', '.join(CAMERA_MODELS)} (COLMAP's names whose "
                         f"parameters transforms.json can hold), got {camera_model!r}")
    if isinstance(max_image_size, bool) or not isinstance(max_image_size, int) or max_image_size < 100:
        raise ValueError(f"max_image_size must be an integer >= 100 (pixels), got {max_image_size!r}")
    if aabb_scale is not None and (isinstance(aabb_scale, bool) or not isinstance(aabb_scale, int)
                                   or not 1 <= aabb_scale <= 128 or aabb_scale & (aabb_scale - 1)):
        raise ValueError(f"aabb_scale must be a power of two in 1..128, got {aabb_scale!r}")


# ---------------------------------------------------------------------------------------- input
def _is_video(source: Path) -> bool:
    """True for a file that is not a photo (it is read as a video); False for a folder."""
    if not source.exists():
        raise FileNotFoundError(f"no such photo folder or video: {source}")
    if source.is_dir():
        return False
    if source.suffix.lower() in PHOTO_EXTENSIONS:
        raise ValueError(f"{source} is a single photo; give the folder that holds the photos")
    return True


def _list_photos(folder: Path) -> list[Path]:
    """The JPEG/PNG files at the top of ``folder`` (sorted by name), checked to be at least
    :data:`MIN_IMAGES`, readable and of one size (they share one camera)."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file())
    if not photos:
        hint = f" (did you mean {folder / 'images'}?)" if (folder / "images").is_dir() else ""
        raise ValueError(f"{folder} is not a folder of photos: it holds no JPEG or PNG files{hint}")
    if len(photos) < MIN_IMAGES:
        raise ValueError(f"too few images in {folder}: {len(photos)}, need at least {MIN_IMAGES} "
                         "(structure from motion wants dozens that overlap)")
    sizes = [_photo_size(p) for p in photos]
    odd = next((i for i, s in enumerate(sizes) if s != sizes[0]), None)
    if odd is not None:
        raise ValueError(f"the photos in {folder} have different sizes ({photos[0].name} is "
                         f"{sizes[0][0]}x{sizes[0][1]}, {photos[odd].name} is {sizes[odd][0]}x{sizes[odd][1]}); "
                         "they must come from one camera at one size")
    return photos


def _photo_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, checking that the file is an image at all."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def _copy_photos(photos: list[Path], images: Path) -> list[str]:
    for p in photos:
        shutil.copyfile(p, images / p.name)
    return [p.name for p in photos]


def _check_out(out: Path, source: Path, force: bool) -> None:
    """Refuse to write over anything unless ``force``; never over the input itself."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")
    resolved, src = out.resolve(), source.resolve()
    if resolved == src or resolved in src.parents:
        raise ValueError(f"--out {out} holds the input {source}: writing it would delete the input; "
                         "choose another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")


# ---------------------------------------------------------------------------------------- video
def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image ``[H, W]`` or ``[H, W, C]``: blur lowers it.

    Example:
        >>> sharpness(frame) > sharpness(scipy.ndimage.gaussian_filter(frame, (2, 2, 0)))
        True
    """
    from scipy import ndimage

    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    return float(ndimage.laplace(grey).var())


def extract_frames(video: str | Path, out_dir: str | Path, n_frames: int = 100, progress: bool = True) -> list[int]:
    """Write about ``n_frames`` frames of ``video`` to ``out_dir`` as ``frame_NNNNNN.jpg`` (NNNNNN:
    the frame's index in the video); returns those indices.

    The video is cut into ``n_frames`` equal stretches of consecutive frames (by the frame count
    its header gives) and the sharpest frame of each (:func:`sharpness`) is kept. The video is
    decoded once; only the best frame so far is held.

    Raises:
        ValueError: the file cannot be read as a video (the message names it and says why), or
            it has fewer than :data:`MIN_IMAGES` frames.

    Example:
        >>> extract_frames("clip.mp4", "frames/", n_frames=50)[:3]
        [4, 13, 21]
    """
    import imageio_ffmpeg

    video, out_dir = Path(video), Path(out_dir)
    reader = imageio_ffmpeg.read_frames(str(video))
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as error:
        raise ValueError(f"cannot read the video {video}: {_last_line(error)}") from None
    width, height = meta["size"]
    out_dir.mkdir(parents=True, exist_ok=True)
    total = round(meta.get("fps", 0) * meta.get("duration", 0)) or _count_frames(video)
    n = min(n_frames, total)
    best: tuple[float, int, np.ndarray] | None = None  # sharpness, index, pixels of the current stretch
    chosen = []
    with contextlib.closing(reader):
        for index, raw in enumerate(tqdm(reader, total=total, desc="frames", unit="frame", disable=not progress,
                                         dynamic_ncols=True)):
            frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            stretch = min(index * n // total, n - 1)  # frames past the header's count join the last one
            if best is not None and min(best[1] * n // total, n - 1) != stretch:
                chosen.append(_write_frame(out_dir, best))
                best = None
            score = sharpness(frame)
            if best is None or score > best[0]:
                best = (score, index, frame)
    if best is not None:
        chosen.append(_write_frame(out_dir, best))
    if len(chosen) < MIN_IMAGES:
        raise ValueError(f"the video {video} gave {len(chosen)} frames, need at least {MIN_IMAGES}")
    return chosen


def _count_frames(video: Path) -> int:
    """Frames in ``video`` by decoding it (when its header gives no frame rate or duration)."""
    import imageio_ffmpeg

    try:
        return imageio_ffmpeg.count_frames_and_secs(str(video))[0]
    except (OSError, RuntimeError) as error:
        raise ValueError(f"cannot read the video {video}: {_last_line(error)}") from None


def _write_frame(out_dir: Path, best: tuple[float, int, np.ndarray]) -> int:
    from PIL import Image

    _, index, pixels = best
    Image.fromarray(pixels).save(out_dir / f"frame_{index:06d}.jpg", quality=95)
    return index


def _last_line(error: BaseException) -> str:
    """ffmpeg's errors end with the reason after pages of version banner: keep the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# -------------------------------------------------------------------------------------- COLMAP
@contextlib.contextmanager
def _colmap_quiet(pycolmap) -> Iterator[None]:
    """COLMAP logs every image and pair to stderr, and warns of every model it gives up on; keep
    its errors only (our bars show the progress, our warning what was not registered), and restore
    the setting afterwards."""
    level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = max(level, 2)
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = level


def _reconstruct(pycolmap, images: Path, colmap_dir: Path, names: list[str], matcher: str, camera_model: str,
                 max_image_size: int, seed: int, progress: bool, log: Callable[[str], None]):
    """Features, matches and the incremental mapper; returns the best ``pycolmap.Reconstruction``,
    bundle-adjusted with the principal point refined, its model written to ``colmap_dir/sparse/0``."""
    colmap_dir.mkdir()
    database = colmap_dir / "database.db"
    pycolmap.set_random_seed(seed)
    log(f"features: SIFT on {len(names)} images (longest side at most {max_image_size} px), "
        f"one shared {camera_model} camera")
    _extract_features(pycolmap, database, images, names, camera_model, max_image_size, progress)
    _match(pycolmap, database, colmap_dir, matcher, progress, log)
    log("mapping: COLMAP's incremental mapper")
    models = _map(pycolmap, database, images, colmap_dir / "sparse", len(names), seed, progress)
    if not models:
        raise PrepareError(f"structure from motion registered none of the {len(names)} images: no pair of them "
                           "shares enough matched features (the photos need texture and overlap)")
    best = max(models.values(), key=lambda m: m.num_reg_images())
    if best.num_reg_images() < MIN_IMAGES:
        raise PrepareError(f"structure from motion registered only {best.num_reg_images()} of the {len(names)} "
                           f"images, need at least {MIN_IMAGES} (the photos need texture and overlap)")
    log(f"bundle adjustment: {best.num_reg_images()} cameras, {best.num_points3D()} points, principal point "
        "refined")
    _bundle_adjust(pycolmap, best)
    shutil.rmtree(colmap_dir / "sparse")  # the mapper's models: keep only the one used, as refined
    (colmap_dir / "sparse" / "0").mkdir(parents=True)
    best.write(colmap_dir / "sparse" / "0")
    return best


def _bundle_adjust(pycolmap, model) -> None:
    """Refine every camera, point and the shared intrinsics, principal point included (the mapper
    keeps it at the image centre). Through the adjuster rather than ``pycolmap.bundle_adjustment``,
    which turns COLMAP's info logging back on."""
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in model.reg_image_ids():
        config.add_image(image_id)
    config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    options = pycolmap.BundleAdjustmentOptions(refine_principal_point=True, print_summary=False)
    pycolmap.create_default_bundle_adjuster(options, config, model).solve()


def _extract_features(pycolmap, database: Path, images: Path, names: list[str], camera_model: str,
                      max_image_size: int, progress: bool) -> None:
    """SIFT into ``database``, a few images per call so that the bar moves; the first call creates
    the shared camera, the later ones reuse it."""
    options = pycolmap.FeatureExtractionOptions()
    options.max_image_size = max_image_size
    per_call = 2 * (os.cpu_count() or 1)
    camera_id = None
    with tqdm(total=len(names), desc="features", unit="image", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(names), per_call):
            reader = pycolmap.ImageReaderOptions(camera_model=camera_model)
            if camera_id is not None:
                reader.existing_camera_id = camera_id
            pycolmap.extract_features(database, images, image_names=names[start:start + per_call],
                                      camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                      extraction_options=options, device=pycolmap.Device.cpu)
            if camera_id is None:
                with _database(pycolmap, database) as db:
                    cameras = db.read_all_cameras()
                camera_id = cameras[0].camera_id if cameras else None
            bar.update(len(names[start:start + per_call]))


@contextlib.contextmanager
def _database(pycolmap, path: Path):
    db = pycolmap.Database.open(path)
    try:
        yield db
    finally:
        db.close()


def _match(pycolmap, database: Path, colmap_dir: Path, matcher: str, progress: bool,
           log: Callable[[str], None]) -> None:
    """Match and verify COLMAP's exhaustive or sequential image pairs, a batch per call so that the
    bar moves."""
    with _database(pycolmap, database) as db:
        names = {image.image_id: image.name for image in db.read_all_images()}
        if matcher == "exhaustive":
            pairs = pycolmap.ExhaustivePairGenerator(pycolmap.ExhaustivePairingOptions(), db).all_pairs()
        else:
            # the next 10 images, and those 16, 32, ... further on (links that hold a long sequence
            # together): pycolmap 4 gives one or the other; loop detection would need a vocabulary
            # tree (a download)
            pairs = []
            for quadratic in (False, True):
                options = pycolmap.SequentialPairingOptions(quadratic_overlap=quadratic, loop_detection=False)
                pairs += pycolmap.SequentialPairGenerator(options, db).all_pairs()
            pairs = sorted(set(pairs))
    log(f"matching: {len(pairs)} image pairs ({matcher})")
    pair_file = colmap_dir / "pairs.txt"
    pairing = pycolmap.ImportedPairingOptions(match_list_path=str(pair_file))
    per_call = max(128, math.ceil(len(pairs) / _MATCHING_CALLS))
    with tqdm(total=len(pairs), desc="matching", unit="pair", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(pairs), per_call):
            batch = pairs[start:start + per_call]
            pair_file.write_text("".join(f"{names[a]} {names[b]}\n" for a, b in batch))
            pycolmap.match_image_pairs(database, pairing_options=pairing, device=pycolmap.Device.cpu)
            bar.update(len(batch))
    pair_file.unlink(missing_ok=True)


def _map(pycolmap, database: Path, images: Path, sparse: Path, n_images: int, seed: int, progress: bool) -> dict:
    """COLMAP's incremental mapper; the bar counts registered images."""
    sparse.mkdir()
    options = pycolmap.IncrementalPipelineOptions()
    options.random_seed = seed
    with tqdm(total=n_images, desc="mapping", unit="image", disable=not progress, dynamic_ncols=True) as bar:
        def registered(k: int) -> Callable[[], None]:
            # a second model restarts the count: the bar never passes the number of images
            return lambda: bar.update(min(k, bar.total - bar.n))

        return pycolmap.incremental_mapping(database, images, sparse, options,
                                            initial_image_pair_callback=registered(2),
                                            next_image_callback=registered(1))


# ------------------------------------------------------------------------------------- geometry
def look_at_point(origins: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """``[3]`` the point cameras look at: the mean of the closest points between every pair of
    optical axes (each taken no further back than its camera), weighted by the squared sine of the
    angle between the axes (parallel axes count for nothing).

    Args:
        origins: ``[n, 3]`` camera centres; backward: ``[n, 3]`` their ``+z`` axes (OpenGL cameras
            look down ``-z``).

    Returns the mean of ``origins`` when no two axes cross at an angle.

    Example:
        >>> look_at_point(np.array([[2., 0, 0], [0, 2, 0]]), np.array([[1., 0, 0], [0, 1, 0]]))
        array([0., 0., 0.])
    """
    d = backward / np.linalg.norm(backward, axis=-1, keepdims=True)
    i, j = np.triu_indices(len(origins), k=1)
    oa, da, ob, db = origins[i], d[i], origins[j], d[j]
    cross = np.cross(da, db)
    weight = (cross * cross).sum(-1)
    gap = ob - oa
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = np.linalg.det(np.stack([gap, db, cross], axis=-2)) / weight
        tb = np.linalg.det(np.stack([gap, da, cross], axis=-2)) / weight
    keep = weight > 1e-5
    if not keep.any():
        return origins.mean(axis=0)
    ta, tb = np.minimum(ta[keep], 0.0), np.minimum(tb[keep], 0.0)  # not behind the camera
    midpoints = 0.5 * (oa[keep] + ta[:, None] * da[keep] + ob[keep] + tb[:, None] * db[keep])
    return (midpoints * weight[keep, None]).sum(axis=0) / weight[keep].sum()


def orient_cameras(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-frame camera-to-world poses ``[n, 4, 4]`` (OpenGL camera axes) as colmap2nerf.py does:
    the mean camera up vector becomes ``+z``, the point the cameras look at (:func:`look_at_point`)
    the origin, and their mean distance from it :data:`CAMERA_DISTANCE`.

    Returns:
        ``(poses [n, 4, 4], world [4, 4])``: the new poses, and the similarity (``s R | t``) that
        maps a point of the old world to the new one (apply it to the sparse points).

    Example:
        >>> poses, world = orient_cameras(c2w)
        >>> np.linalg.norm(poses[:, :3, 3], axis=-1).mean()
        4.0
    """
    from scipy.spatial.transform import Rotation

    up = c2w[:, :3, 1].sum(axis=0)
    rotation = np.eye(3)
    if np.linalg.norm(up) > 1e-8 * len(c2w):
        rotation = Rotation.align_vectors([[0.0, 0.0, 1.0]], [up / np.linalg.norm(up)])[0].as_matrix()
    centres = c2w[:, :3, 3] @ rotation.T
    centre = look_at_point(centres, c2w[:, :3, 2] @ rotation.T)
    scale = CAMERA_DISTANCE / max(np.linalg.norm(centres - centre, axis=-1).mean(), 1e-12)
    world = np.eye(4)
    world[:3, :3], world[:3, 3] = scale * rotation, -scale * centre
    poses = np.tile(np.eye(4), (len(c2w), 1, 1))
    poses[:, :3, :3] = rotation @ c2w[:, :3, :3]
    poses[:, :3, 3] = scale * (centres - centre)
    return poses, world


def choose_aabb_scale(points: np.ndarray, quantile: float = AABB_QUANTILE) -> int:
    """The smallest power of two (1..128) whose instant-ngp box holds ``quantile`` of ``points``
    ``[n, 3]`` (in the NeRF world of the poses; instant-ngp scales it by 0.33 into its box
    ``0.5 +- aabb_scale / 2``).

    Example:
        >>> choose_aabb_scale(np.array([[1.4, 0, 0], [0, -1.2, 0.3]]))  # within 1.5: the unit cube
        1
    """
    if len(points) == 0:
        return 1
    extent = float(np.quantile(np.abs(points).max(axis=-1), quantile))
    side = 2 * DEFAULT_SCALE * extent
    return int(min(128, 2 ** max(0, math.ceil(math.log2(max(side, 1e-12))))))


def _colmap_c2w(image) -> np.ndarray:
    """``[4, 4]`` camera-to-world of a COLMAP image, with OpenGL camera axes."""
    cam_from_world = image.cam_from_world().matrix()
    c2w = np.eye(4)
    c2w[:3, :3] = cam_from_world[:3, :3].T @ _OPENGL_FROM_OPENCV
    c2w[:3, 3] = -cam_from_world[:3, :3].T @ cam_from_world[:3, 3]
    return c2w


# -------------------------------------------------------------------------------------- writing
def _write_scene(staging: Path, model, names: list[str], source: Path, aabb_scale: int | None, matcher: str,
                 source_frames: list[int] | None) -> PrepareResult:
    """transforms.json and points.ply from ``model``; removes the images that were not registered."""
    posed = {model.images[i].name: model.images[i] for i in model.reg_image_ids()}
    registered = [n for n in names if n in posed]
    unregistered = [n for n in names if n not in posed]
    if unregistered:
        shown = ", ".join(unregistered[:5]) + (", ..." if len(unregistered) > 5 else "")
        warnings.warn(f"{source}: structure from motion registered {len(registered)} of {len(names)} images; "
                      f"writing only those ({len(unregistered)} left out: {shown})", stacklevel=3)
        for name in unregistered:
            (staging / "images" / name).unlink()
    poses, world = orient_cameras(np.stack([_colmap_c2w(posed[n]) for n in registered]))
    xyz, rgb = _points(model)
    xyz = xyz @ world[:3, :3].T + world[:3, 3]
    aabb = aabb_scale if aabb_scale is not None else choose_aabb_scale(xyz)
    camera = model.cameras[posed[registered[0]].camera_id]
    write_json(staging / "transforms.json", {
        **_intrinsics(camera), "aabb_scale": aabb,
        "frames": [{"file_path": f"images/{n}", "transform_matrix": p.tolist()} for n, p in zip(registered, poses)],
    })
    _write_ply(staging / "points.ply", xyz, rgb)
    return PrepareResult(out=staging, n_given=len(names), registered=registered, unregistered=unregistered,
                         reprojection_error=float(model.compute_mean_reprojection_error()), n_points=len(xyz),
                         aabb_scale=aabb, matcher=matcher, source_frames=source_frames)


def _intrinsics(camera) -> dict:
    """instant-ngp's intrinsic keys from a COLMAP camera of one of :data:`CAMERA_MODELS`."""
    values = dict(zip([n.strip() for n in camera.params_info.split(",")], map(float, camera.params)))
    fx, fy = values.get("fx", values.get("f")), values.get("fy", values.get("f"))
    w, h = int(camera.width), int(camera.height)
    return {"camera_model": "OPENCV",  # the k1 k2 p1 p2 below are OpenCV's (zero where the model has none)
            "w": w, "h": h, "fl_x": fx, "fl_y": fy, "cx": values["cx"], "cy": values["cy"],
            "k1": values.get("k1", values.get("k", 0.0)), "k2": values.get("k2", 0.0),
            "p1": values.get("p1", 0.0), "p2": values.get("p2", 0.0),
            "camera_angle_x": 2 * math.atan(0.5 * w / fx), "camera_angle_y": 2 * math.atan(0.5 * h / fy)}


def _points(model) -> tuple[np.ndarray, np.ndarray]:
    """``[P, 3]`` float positions and ``[P, 3]`` uint8 colours of the model's 3D points."""
    points = list(model.points3D.values())
    xyz = np.array([p.xyz for p in points], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    return xyz, rgb


def _write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """A binary PLY point cloud with vertex colours."""
    import trimesh

    colours = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=-1)
    cloud = trimesh.PointCloud(xyz.astype(np.float32), colors=colours)
    path.write_bytes(cloud.export(file_type="ply"))

"""Neural radiance fields with a multiresolution hash encoding (Müller et al. 2022, section 5.4).

Pieces, each usable on its own:

* data: :func:`load_dataset` (Blender / NeRF-synthetic and instant-ngp / nerfstudio ``transforms``
  files), :class:`Cameras` and :func:`generate_rays`, :func:`make_builtin_scene` (a ray-traced test
  scene written in the Blender format);
* model: :class:`NerfField` (hash grid -> density MLP; spherical harmonics + features -> colour MLP),
  built from an instant-ngp-shaped config (:func:`parse_nerf_config`, ``configs/nerf/base.json``);
* rendering: :class:`OccupancyGrid` (empty-space skipping), :class:`Renderer` (rays -> march ->
  field -> composite) shared by training, evaluation and videos;
* training: :class:`NerfTask` (adaptive rays per batch, random backgrounds, occupancy-grid updates)
  driven by the shared loop (:mod:`ngp.train.loop`); :func:`train_nerf` trains a run folder;
* outputs: :func:`evaluate` (PSNR, SSIM), :func:`orbit_poses`/:func:`write_video`,
  :func:`extract_mesh`; and the reading commands on a run folder (:mod:`ngp.nerf.runs`:
  :func:`load_nerf_run`, :func:`eval_run`, :func:`render_run`, :func:`mesh_run`).

Example::

    >>> from ngp import nerf
    >>> metrics = nerf.train_nerf("data/nerf/lego", "runs/lego", downscale=2, seconds=300)
    >>> metrics["val_psnr"]
    >>> nerf.eval_run("runs/lego", split="test")["mean_psnr"]

Command line: ``ngp nerf train builtin --out runs/builtin --seconds 120``, then
``ngp nerf eval|render|mesh runs/builtin ...``.
"""

from ngp.nerf.builtin_scene import make_builtin_scene
from ngp.geometry.cameras import Cameras, generate_rays
from ngp.nerf.datasets import NerfDataset, load_dataset
from ngp.nerf.evaluation import EvalResult, evaluate, psnr, ssim
from ngp.nerf.field import DEFAULT_CONFIG, NerfField, parse_nerf_config
from ngp.nerf.mesh import extract_mesh, write_mesh
from ngp.nerf.occupancy import OccupancyGrid
from ngp.nerf.renderer import Renderer, RenderResult, RenderSettings
from ngp.nerf.runs import NerfRun, eval_run, load_nerf_run, mesh_run, render_run
from ngp.nerf.trainer import NerfTask, TrainSettings, build_nerf_task, train_nerf
from ngp.nerf.video import orbit_poses, write_video

__all__ = [
    "Cameras", "DEFAULT_CONFIG", "EvalResult", "NerfDataset", "NerfField", "NerfRun", "NerfTask", "OccupancyGrid",
    "RenderResult", "RenderSettings", "Renderer", "TrainSettings", "build_nerf_task", "eval_run", "evaluate",
    "extract_mesh", "generate_rays", "load_dataset", "load_nerf_run", "make_builtin_scene", "mesh_run",
    "orbit_poses", "parse_nerf_config", "psnr", "render_run", "ssim", "train_nerf", "write_mesh",
    "write_video",
]

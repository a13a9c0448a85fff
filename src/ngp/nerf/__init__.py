"""Neural radiance fields with a multiresolution hash encoding (Müller et al. 2022, section 5.4).

Pieces, each usable on its own:

* data: :func:`load_dataset` (Blender / NeRF-synthetic and instant-ngp / nerfstudio ``transforms``
  files), :class:`Cameras` and :func:`generate_rays`, :func:`make_builtin_scene` (a ray-traced test
  scene written in the Blender format);
* model: :class:`NerfField` (hash grid -> density MLP; spherical harmonics + features -> colour MLP),
  built from an instant-ngp-shaped config (:func:`parse_nerf_config`, ``configs/nerf/base.json``);
* rendering: :class:`OccupancyGrid` (empty-space skipping), :class:`Renderer` (rays -> march ->
  field -> composite) shared by training, evaluation and videos;
* training: :class:`NerfTrainer` (adaptive rays per batch, random backgrounds, Adam + EMA,
  resumable safetensors checkpoints);
* outputs: :func:`evaluate` (PSNR, SSIM), :func:`orbit_poses`/:func:`write_video`,
  :func:`extract_mesh`; and whole runs as the command line does them (:mod:`ngp.nerf.runs`).

Example::

    >>> from ngp import nerf
    >>> dataset = nerf.load_dataset("data/nerf/lego", downscale=2)
    >>> trainer = nerf.NerfTrainer(dataset)
    >>> trainer.train(seconds=300)
    >>> val = nerf.load_dataset("data/nerf/lego", "val", downscale=2)
    >>> with trainer.optimizer.averaged_weights():
    ...     print(nerf.evaluate(trainer.renderer, val).mean_psnr)

Command line: ``ngp nerf train builtin --out runs/builtin --seconds 120``, then
``ngp nerf eval|render|mesh runs/builtin ...``.
"""

from ngp.nerf.builtin_scene import make_builtin_scene
from ngp.nerf.cameras import Cameras, generate_rays
from ngp.nerf.datasets import NerfDataset, load_dataset
from ngp.nerf.evaluation import EvalResult, evaluate, psnr, ssim
from ngp.nerf.field import DEFAULT_CONFIG, NerfField, parse_nerf_config
from ngp.nerf.mesh import extract_mesh, write_mesh
from ngp.nerf.occupancy import OccupancyGrid
from ngp.nerf.renderer import Renderer, RenderResult, RenderSettings
from ngp.nerf.runs import eval_run, load_run, mesh_run, render_run, train_run
from ngp.nerf.trainer import NerfTrainer, StepStats, TrainSettings
from ngp.nerf.video import orbit_poses, write_video

__all__ = [
    "Cameras", "DEFAULT_CONFIG", "EvalResult", "NerfDataset", "NerfField", "NerfTrainer", "OccupancyGrid",
    "RenderResult", "RenderSettings", "Renderer", "StepStats", "TrainSettings", "eval_run", "evaluate",
    "extract_mesh", "generate_rays", "load_dataset", "load_run", "make_builtin_scene", "mesh_run",
    "orbit_poses", "parse_nerf_config", "psnr", "render_run", "ssim", "train_run", "write_mesh",
    "write_video",
]

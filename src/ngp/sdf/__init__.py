"""Neural signed distance functions (instant-ngp's SDF primitive): learn an SDF from a mesh, extract
and render its surface, measure it.

Layout (data -> model -> training -> outputs):

* :mod:`ngp.sdf.sampling` — ground-truth signed distances (libigl: exact distance + winding-number
  sign) and instant-ngp's training samples (4/8 on the surface, 3/8 near it, 1/8 uniform);
* :mod:`ngp.sdf.model` — :class:`NeuralSDF`, hash encoding + MLP, points ``[N, 3]`` -> distances ``[N]``
  in the mesh's units (``unit=True``: in the unit cube), with :meth:`NeuralSDF.gradient` for normals;
* :mod:`ngp.sdf.trainer` — :class:`SDFTrainer` and :func:`fit_sdf` (the run folder);
* :mod:`ngp.sdf.extract` — marching cubes; :mod:`ngp.sdf.render` — sphere tracing;
  :mod:`ngp.sdf.metrics` — IoU and Chamfer distance.

Example:
    >>> from ngp.sdf import fit_sdf, NeuralSDF, render_sdf
    >>> fit_sdf("armadillo.obj", "runs/armadillo", seconds=60)
    >>> sdf = NeuralSDF.from_checkpoint("runs/armadillo")
    >>> sdf(torch.tensor([[0.0, 0.0, 0.0]]))        # [1] distance in mesh units
"""

from ngp.sdf.extract import extract_mesh
from ngp.sdf.metrics import chamfer_distance, grid_iou
from ngp.sdf.model import NeuralSDF
from ngp.sdf.render import render_sdf
from ngp.sdf.sampling import MeshSDF, SampleGenerator, SamplePool
from ngp.sdf.trainer import DEFAULT_CONFIG, SDFTrainer, fit_sdf, sdf_config

__all__ = [
    "DEFAULT_CONFIG", "MeshSDF", "NeuralSDF", "SDFTrainer", "SampleGenerator", "SamplePool", "chamfer_distance",
    "extract_mesh", "fit_sdf", "grid_iou", "render_sdf", "sdf_config",
]

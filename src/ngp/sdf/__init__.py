"""Neural signed distance functions (instant-ngp's SDF primitive): learn an SDF from a mesh, extract
and render its surface, measure it.

Layout (data -> model -> training -> outputs):

* :mod:`ngp.sdf.sampling` — ground-truth signed distances (libigl: exact distance + winding-number
  sign) and instant-ngp's training samples (4/8 on the surface, 3/8 near it, 1/8 uniform);
* :mod:`ngp.sdf.model` — :class:`NeuralSDF`, hash encoding + MLP, points ``[N, 3]`` -> distances ``[N]``
  in the mesh's units (``unit=True``: in the unit cube), with :meth:`NeuralSDF.gradient` for normals;
* :mod:`ngp.sdf.trainer` — :class:`SDFTask` (the step the shared loop :mod:`ngp.train.loop` drives),
  :func:`build_sdf_task` and :func:`fit_sdf` (a run folder, new or resumed);
* :mod:`ngp.sdf.extract` — marching cubes; :mod:`ngp.sdf.render` — sphere tracing;
  :mod:`ngp.sdf.metrics` — IoU and Chamfer distance.

Example:
    >>> from ngp.sdf import fit_sdf, NeuralSDF, render_sdf
    >>> fit_sdf("armadillo.obj", "runs/armadillo", seconds=60)
    >>> sdf = NeuralSDF.from_checkpoint("runs/armadillo")
    >>> sdf(torch.tensor([[0.0, 0.0, 0.0]]))        # [1] distance in mesh units

Command line: ``ngp sdf fit MESH --out RUN``, ``ngp sdf render RUN --out FILE.png``,
``ngp sdf mesh RUN --out FILE.ply``.
"""

from ngp.sdf.extract import extract_mesh
from ngp.sdf.metrics import chamfer_distance, grid_iou
from ngp.sdf.model import NeuralSDF
from ngp.sdf.render import render_sdf
from ngp.sdf.sampling import MeshSDF, SampleGenerator, SamplePool
from ngp.sdf.trainer import SDFOutputs, SDFTask, build_sdf_task, fit_sdf

__all__ = [
    "MeshSDF", "NeuralSDF", "SDFOutputs", "SDFTask", "SampleGenerator", "SamplePool", "build_sdf_task",
    "chamfer_distance", "extract_mesh", "fit_sdf", "grid_iou", "render_sdf",
]

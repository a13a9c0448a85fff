"""The learned signed distance function: hash encoding + MLP, with the mesh's normalisation attached.

Coordinates: the network lives in the unit cube (the mesh scaled by :class:`ngp.io.meshes.MeshNormalization`).
:class:`NeuralSDF` takes points **in the input mesh's own units** by default and returns distances in
those units; pass ``unit=True`` to work in the unit cube instead (distances then in unit-cube units).
Outside the unit cube the hash grid clamps its input, so the distance there is continued as
``sdf(clamp(p)) + |p - clamp(p)|``, which keeps sphere tracing and marching well behaved.

Example:
    >>> sdf = NeuralSDF.from_checkpoint("runs/armadillo")   # a run folder of `ngp sdf fit`
    >>> d = sdf(points)              # [N, 3] mesh units -> [N] mesh units, negative inside
    >>> n = sdf.gradient(points)     # [N, 3] ~unit normals (d sdf / d p) via the encoding's input gradient
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ngp.config import otype_of
from ngp.encodings import Takikawa
from ngp.io.checkpoints import CheckpointError, load_checkpoint
from ngp.io.meshes import Mesh, MeshNormalization
from ngp.networks import NetworkWithInputEncoding
from ngp.train.precision import resolve_device

#: instant-ngp's finest hash-grid resolution over the unit cube for SDFs (``desired_resolution``),
#: used to derive ``per_level_scale`` when a config gives neither it nor ``finest_resolution``.
SDF_FINEST_RESOLUTION = 2048


def sdf_encoding_config(encoding: Mapping[str, Any]) -> dict[str, Any]:
    """instant-ngp's SDF defaults for a grid encoding: ``per_level_scale = (2048 / N_min)^(1/(L-1))``."""
    encoding = copy.deepcopy(dict(encoding))
    is_grid = "grid" in otype_of(encoding, "encoding").lower()
    if is_grid and encoding.get("per_level_scale") is None and encoding.get("finest_resolution") is None:
        encoding["finest_resolution"] = SDF_FINEST_RESOLUTION
    return encoding


def surface_test(mesh: Mesh):
    """``touches(centres [M, 3], half_size) -> bool [M]`` for a Takikawa octree: whether a cube may
    meet the mesh (unit-cube coordinates). Conservative: the cube's circumscribed sphere meets it
    (distance from the centre to the nearest triangle at most ``sqrt(3) * half_size``); instant-ngp
    tests the cube itself, so this keeps somewhat more cells near the surface.

    Example:
        >>> touches = surface_test(unit_mesh)
        >>> touches(np.array([[0.5, 0.5, 0.5]]), 0.5)   # the unit cube holds the mesh
        array([ True])
    """
    from ngp.sdf.sampling import MeshSDF

    distance = MeshSDF(mesh.vertices, mesh.faces)
    return lambda centres, half_size: distance.unsigned_distance(centres) <= np.sqrt(3.0) * half_size


class NeuralSDF(nn.Module):
    """A signed distance function ``[N, 3] -> [N]`` learned from a mesh.

    Args:
        encoding_config: tiny-cuda-nn encoding config (``HashGrid`` as in instant-ngp's ``base.json``;
            instant-ngp's ``Takikawa`` octree encoding builds its octree around ``mesh``).
        network_config: tiny-cuda-nn network config (1 output).
        normalization: mesh units <-> unit cube (identity-like ``center=(.5,.5,.5), scale=1`` by default).
        aabb: ``[2, 3]`` the region of the unit cube the mesh occupies (where the SDF was trained).
        mesh: the mesh in the unit cube, for a ``Takikawa`` encoding's octree (a model that will load a
            checkpoint needs none: the octree is in its state dict).
    """

    def __init__(
        self,
        encoding_config: Mapping[str, Any],
        network_config: Mapping[str, Any],
        normalization: MeshNormalization | None = None,
        aabb: np.ndarray | None = None,
        mesh: Mesh | None = None,
    ):
        super().__init__()
        self.encoding_config = sdf_encoding_config(encoding_config)
        self.network_config = dict(network_config)
        self.field = NetworkWithInputEncoding(3, 1, self.encoding_config, self.network_config)
        if isinstance(self.field.encoding, Takikawa) and mesh is not None:
            self.field.encoding.build_octree(surface_test(mesh))
        self.normalization = normalization or MeshNormalization((0.5, 0.5, 0.5), 1.0)
        box = np.array([[0.0] * 3, [1.0] * 3]) if aabb is None else np.asarray(aabb, dtype=np.float64)
        if box.shape != (2, 3) or not (box[1] > box[0]).all():
            raise ValueError(f"aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min, got {box.tolist()}")
        self.register_buffer("aabb", torch.tensor(box, dtype=torch.float32), persistent=False)

    # -- evaluation ---------------------------------------------------------------------------------
    def unit_sdf(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3]`` unit-cube points -> ``[N]`` unit-cube distances (the raw network, differentiable).

        Points on another device than the model are moved to it, and the distances come back on the
        points' device: evaluation code (meshing, metrics, rendering) works on CPU arrays whatever
        device the model trains on.
        """
        if x.dim() != 2 or x.shape[1] != 3:
            raise ValueError(f"NeuralSDF expects points of shape [N, 3], got {list(x.shape)}")
        home = x.device
        x = x.to(self.aabb.device, self.aabb.dtype)
        inside = x.clamp(0.0, 1.0)
        outside = (x - inside).norm(dim=-1)  # 0 inside the cube
        return (self.field(inside)[:, 0] + outside).to(home)

    def forward(self, points: torch.Tensor, unit: bool = False) -> torch.Tensor:
        """``[N, 3]`` points (mesh units, or unit cube if ``unit``) -> ``[N]`` signed distances, same units."""
        if unit:
            return self.unit_sdf(points)
        scale = self.normalization.scale
        return self.unit_sdf(self.normalization.to_unit(points.to(self.aabb.dtype))) * scale

    def gradient(self, points: torch.Tensor, unit: bool = False) -> torch.Tensor:
        """``[N, 3]`` -> ``[N, 3]``: ``d sdf / d points`` by autograd through the encoding (not normalised;
        its length is ~1 where the SDF is well learned). The same in both unit systems."""
        with torch.enable_grad():
            x = points.detach().to(self.aabb.dtype).requires_grad_(True)
            distance = self.forward(x, unit=unit)
            (grad,) = torch.autograd.grad(distance.sum(), x)
        return grad

    # -- persistence --------------------------------------------------------------------------------
    def geometry(self) -> dict[str, Any]:
        """What the weights do not hold (JSON): ``{"normalization": {...}, "aabb": [[3], [3]]}``, and
        ``"active_levels"`` while a coarse-to-fine schedule has not yet faded all of the grid's levels
        in (a run stopped early is the model it was). A run keeps it in its checkpoint's task state,
        beside the config the model is built from."""
        geometry = {"normalization": self.normalization.to_dict(), "aabb": self.aabb.tolist()}
        active = getattr(self.field.encoding, "active_levels", None)
        if active is not None:
            geometry["active_levels"] = active
        return geometry

    @classmethod
    def build(cls, config: Mapping[str, Any], geometry: Mapping[str, Any] | None = None) -> "NeuralSDF":
        """A model from a run's config (its ``encoding`` and ``network``) and :meth:`geometry`'s JSON."""
        geometry = geometry or {}
        normalization = geometry.get("normalization")
        model = cls(config["encoding"], config["network"],
                    MeshNormalization.from_dict(normalization) if normalization is not None else None,
                    np.asarray(geometry["aabb"]) if geometry.get("aabb") is not None else None)
        if geometry.get("active_levels") is not None:
            model.field.encoding.set_active_levels(float(geometry["active_levels"]))
        return model

    @classmethod
    def from_checkpoint(cls, run: str | Path, device: str | torch.device = "cpu") -> "NeuralSDF":
        """The trained SDF of an ``ngp sdf fit`` run (its folder, or its ``checkpoint/`` folder) on
        ``device``, in eval mode, with the EMA-averaged weights that training's outputs use.

        Raises FileNotFoundError (no such run) or :class:`~ngp.io.checkpoints.CheckpointError` (not an
        SDF checkpoint, another format version, weights that do not fit the config).
        """
        from ngp.train.loop import load_trained_model

        tensors, meta = load_checkpoint(run, primitive="sdf")
        geometry = meta.get("task", {}).get("geometry")
        if not isinstance(geometry, Mapping) or not {"normalization", "aabb"} <= set(geometry):
            raise CheckpointError(f"{run}: the SDF checkpoint does not record its normalisation and box")
        try:
            model = cls.build(meta["config"], geometry)
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{run}: the SDF checkpoint's config or geometry is unusable: {error}") from None
        load_trained_model(model, tensors, meta, run)
        return model.to(resolve_device(device)).eval()


__all__ = ["NeuralSDF", "SDF_FINEST_RESOLUTION", "sdf_encoding_config", "surface_test"]

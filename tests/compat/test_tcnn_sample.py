"""tiny-cuda-nn's PyTorch sample (``samples/mlp_learning_an_image_pytorch.py``) with ``import ngp as tcnn``.

The sample's steps, trimmed (a 32 x 32 image, a few dozen steps, no image files written) and with its
device lines changed to the CPU (``torch.device("cpu")`` for ``"cuda"``; no ``torch.cuda.synchronize()``):
read the JSON config (its ``data/config_hash.json``, vendored in ``tests/compat/configs``), build
``tcnn.NetworkWithInputEncoding(n_input_dims=2, n_output_dims=..., encoding_config=..., network_config=...)``,
print it, fit it with ``torch.optim.Adam`` and a relative L2 loss to bilinear lookups of the image
(traced with ``torch.jit.trace``), render every pixel, and end with ``tcnn.free_temporary_memory()``.
"""

from __future__ import annotations

from pathlib import Path

import json5
import numpy as np
import pytest
import torch

import ngp as tcnn
from ngp.io.images import read_image

CONFIG = Path(__file__).parent / "configs" / "tiny-cuda-nn" / "data" / "config_hash.json"


class BilinearImage(torch.nn.Module):
    """The sample's target: bilinear lookups ``[N, 2]`` (x, y in [0, 1]) -> ``[N, C]`` of an image."""

    def __init__(self, data: np.ndarray, device):
        super().__init__()
        self.data = torch.from_numpy(data).float().to(device)
        self.shape = self.data.shape

    def forward(self, xs):
        with torch.no_grad():
            height, width = self.shape[0], self.shape[1]
            scaled = xs * torch.tensor([width, height], device=xs.device).float()
            corner = scaled.long()
            t = scaled - corner.float()
            x0, y0 = corner[:, 0].clamp(0, width - 1), corner[:, 1].clamp(0, height - 1)
            x1, y1 = (x0 + 1).clamp(max=width - 1), (y0 + 1).clamp(max=height - 1)
            tx, ty = t[:, 0:1], t[:, 1:2]
            top = self.data[y0, x0] * (1 - tx) + self.data[y0, x1] * tx
            bottom = self.data[y1, x0] * (1 - tx) + self.data[y1, x1] * tx
            return top * (1 - ty) + bottom * ty


@pytest.fixture(scope="module")
def image():
    pixels = read_image("builtin:astronaut").array[100:132, 200:232].astype(np.float32) / 255.0
    return BilinearImage(pixels, torch.device("cpu"))


def pixel_centres(image, device):
    """Every pixel centre as (x, y), rows of the image in order (the sample's ``xy``)."""
    height, width = image.shape[0], image.shape[1]
    ys = torch.linspace(0.5 / height, 1 - 0.5 / height, height, device=device)
    xs = torch.linspace(0.5 / width, 1 - 0.5 / width, width, device=device)
    yv, xv = torch.meshgrid([ys, xs], indexing="ij")
    return torch.stack((xv.flatten(), yv.flatten())).t()


def relative_l2(output, targets):
    return ((output - targets.to(output.dtype)) ** 2 / (output.detach() ** 2 + 0.01)).mean()


def fit(model, image, steps, batch_size=2**12, seed=0):
    """The sample's loop: Adam(lr=0.01) on the relative L2 error to the traced image lookup."""
    device = torch.device("cpu")
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    traced_image = torch.jit.trace(image, torch.rand([batch_size, 2], device=device, dtype=torch.float32))
    losses = []
    for _ in range(steps):
        batch = torch.rand([batch_size, 2], device=device, dtype=torch.float32)
        loss = relative_l2(model(batch), traced_image(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def render_error(model, image):
    xy = pixel_centres(image, torch.device("cpu"))
    with torch.no_grad():
        picture = model(xy).reshape(image.shape).clamp(0.0, 1.0)
    return (picture - image.data).square().mean().item()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*trace.*:DeprecationWarning")  # the sample traces
def test_the_sample_runs_with_ngp_as_tcnn(image, capsys):
    with open(CONFIG) as config_file:
        config = json5.load(config_file)  # the sample uses commentjson; json5 reads the same files
    device = torch.device("cpu")  # the sample's torch.device("cuda")
    n_channels = image.data.shape[2]
    model = tcnn.NetworkWithInputEncoding(n_input_dims=2, n_output_dims=n_channels,
                                          encoding_config=config["encoding"],
                                          network_config=config["network"]).to(device)
    print(model)
    assert "HashGrid" in capsys.readouterr().out
    untrained = render_error(model, image)
    losses = fit(model, image, steps=60)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])  # the sample's loss falls
    assert render_error(model, image) < 0.5 * untrained  # and the rendered image gets closer
    tcnn.free_temporary_memory()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore:.*trace.*:DeprecationWarning")
def test_the_samples_naked_encoding_and_network_variant(image):
    """The sample's commented-out alternative: ``tcnn.Encoding`` then ``tcnn.Network`` in a Sequential."""
    config = json5.loads(CONFIG.read_text())
    encoding = tcnn.Encoding(n_input_dims=2, encoding_config=config["encoding"])
    network = tcnn.Network(n_input_dims=encoding.n_output_dims, n_output_dims=3, network_config=config["network"])
    model = torch.nn.Sequential(encoding, network)
    losses = fit(model, image, steps=30)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_tcnn_module_api():
    assert tcnn.supports_jit_fusion() is False
    config = json5.loads(CONFIG.read_text())
    a = tcnn.NetworkWithInputEncoding(2, 3, config["encoding"], config["network"], 42)  # tcnn's positional seed
    b = tcnn.NetworkWithInputEncoding(2, 3, config["encoding"], config["network"], seed=42)
    c = tcnn.NetworkWithInputEncoding(2, 3, config["encoding"], config["network"], seed=43)
    for module in (a, b):
        assert isinstance(module, tcnn.Module) and module.seed == 42
        assert (module.n_input_dims, module.n_output_dims) == (2, 3)
    pairs = list(zip(a.parameters(), b.parameters(), c.parameters()))
    assert all(torch.equal(pa, pb) for pa, pb, _ in pairs)  # same seed, same initial weights
    assert not all(torch.equal(pa, pc) for pa, _, pc in pairs)
    encoding = tcnn.Encoding(2, config["encoding"], seed=1337, dtype=torch.float16)
    assert encoding.dtype == torch.float16 and encoding(torch.rand(5, 2)).dtype == torch.float16
    assert encoding.n_output_dims == 16 * 2 and isinstance(encoding, tcnn.Module)
    network = tcnn.Network(encoding.n_output_dims, 3, config["network"], 7)
    assert network.seed == 7 and network.jit_fusion is False
    network.jit_fusion = True  # settable, as tiny-cuda-nn's; nothing is fused here
    assert network(torch.rand(5, 32)).shape == (5, 3)

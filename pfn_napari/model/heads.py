"""The heads of PFN on top of a backbone's features (see ``backbones.py`` for the keys).

* :class:`CategoryHead`: fc8, a 1x1 conv on ``fc7`` to ``C + 1`` class scores.
* :class:`LocationStream`: one multi-scale stream: 3x3 conv 128 + ReLU at the feature's own
  resolution, the 2 coordinate maps concatenated (130 channels), 3x3 conv to ``L`` channels.
  The second conv is evaluated only on the stride-8 grid (stride ``8 / s`` on a stride-``s``
  feature): output cell j is the full-resolution prediction at pixel ``8 j``, exactly, so each
  stream is supervised (and fused) on the grid without computing the pixels in between.
* :class:`LocationHead`: the streams and their fusion (concat + 1x1 conv, the plain
  element-wise sum, or a per-stream weighted sum; a single stream is passed through unchanged).
* :class:`CountHead`: fc7 features and/or the fused locations -> 3x3 conv stride 2 (128) +
  ReLU -> adaptive average pool -> fc 1024 + ReLU -> fc ``C``. No output activation: the paper
  trains counts by Euclidean regression, so counts may come out negative (grouping rounds and
  clamps them).
* :class:`DensityCountHead` (``model.count_head='density'``): the same layers applied per cell
  (the fc layers as 1x1 convs), a non-negative count per cell and class, summed over the image:
  the same objects on a bigger canvas give the same count (an average pool sees a density).

Size-consistent locations (``model.location_unit = u > 0``, docs/model.md): every stream
predicts ``raw`` in units of ``u`` pixels, and its output is ``anchor + raw * u / (W, H)`` where
the anchor is the cell's own normalised position for position channels (cx, lx, ...) and 0 for
offsets and sizes. The coordinate maps are pixel positions / :data:`COORD_UNIT_PX`. What the
network reads from the image content is then a pixel offset, the same in a 193-pixel training
crop and a 640-pixel test image; with ``u = 0`` (the literal reading) it is a fraction of the
input's size, which changes with the canvas.

New layers are initialised from N(0, :data:`INIT_STD`) with zero bias (the paper's 0.01).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FUSIONS, POSITION_CHANNELS, X_CHANNELS
from ..structures import STRIDE, grid_size

#: Pixels per unit of the coordinate maps in ``location_unit`` mode (a constant: a pixel's
#: coordinate does not depend on the canvas size).
COORD_UNIT_PX = 512.0
#: Offset added to the density count head's per-cell logits before the softplus, so an
#: untrained head predicts ~0.0025 instances per cell and class rather than 0.69.
DENSITY_OFFSET = -6.0
#: Standard deviation of the Gaussian init of new layers (the paper's).
INIT_STD = 0.01
#: Grid of the fc count head's adaptive average pool (any image size gives pool x pool cells).
COUNT_POOL = 4


def init_new_layers(module: nn.Module, std: float = INIT_STD) -> None:
    """Gaussian N(0, std) weights and zero biases for every conv / linear layer of ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def coordinate_maps(height: int, width: int, stride: int, image_height: float,
                    image_width: float, like: Tensor) -> Tensor:
    """``(1, 2, height, width)`` normalised coordinates (x, y) of the cells of a stride-``stride``
    map of an ``image_height x image_width`` input: cell (i, j) sits on pixel (s i, s j), whose
    center is ``x = (s j + 0.5) / W``, ``y = (s i + 0.5) / H`` (the convention of the targets),
    so every stream's coordinates mean the same position in the image. (Pass
    ``COORD_UNIT_PX`` for both sizes to get pixel positions in constant units.)"""
    xs = (torch.arange(width, device=like.device, dtype=like.dtype) * stride + 0.5) / image_width
    ys = (torch.arange(height, device=like.device, dtype=like.dtype) * stride + 0.5) / image_height
    gx = xs.view(1, 1, 1, width).expand(1, 1, height, width)  # (1, 1, h, w)
    gy = ys.view(1, 1, height, 1).expand(1, 1, height, width)  # (1, 1, h, w)
    return torch.cat([gx, gy], dim=1)  # (1, 2, h, w)


class CategoryHead(nn.Module):
    """fc8: ``(B, fc7, h, w) -> (B, C + 1, h, w)`` class logits (0 is background)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc8 = nn.Conv2d(in_channels, num_classes + 1, 1)

    def forward(self, fc7: Tensor) -> Tensor:
        return self.fc8(fc7)  # (B, C+1, h, w)


class LocationStream(nn.Module):
    """One stream on a stride-``stride`` feature -> ``(B, L, grid_size(H), grid_size(W))``."""

    def __init__(self, in_channels: int, stride: int, out_channels: int, mid_channels: int = 128,
                 coord_maps: bool = True, constant_coords: bool = False) -> None:
        super().__init__()
        if STRIDE % stride:
            raise ValueError(f"stream stride {stride} does not divide {STRIDE}")
        self.stride = stride
        self.coord_maps = coord_maps
        self.constant_coords = constant_coords  # coordinates in pixels / COORD_UNIT_PX
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(mid_channels + (2 if coord_maps else 0), out_channels, 3,
                               stride=STRIDE // stride, padding=1)

    def _coord_norm(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """What pixel positions are divided by: the input's (H, W), or a constant."""
        if self.constant_coords:
            return COORD_UNIT_PX, COORD_UNIT_PX
        return float(image_size[0]), float(image_size[1])

    def forward(self, feature: Tensor, image_size: tuple[int, int]) -> Tensor:
        if STRIDE // self.stride >= 4:
            return self._forward_sparse(feature, image_size)
        H, W = image_size
        y = F.relu(self.conv1(feature))  # (B, 128, hs, ws)
        if self.coord_maps:
            hs, ws = y.shape[-2:]
            coords = coordinate_maps(hs, ws, self.stride, *self._coord_norm(image_size), y)  # (1, 2, hs, ws)
            y = torch.cat([y, coords.expand(y.shape[0], -1, -1, -1)], dim=1)  # (B, 130, hs, ws)
        out = self.conv2(y)  # (B, L, >= h, >= w): cell j on pixel 8j
        return out[:, :, :grid_size(H), :grid_size(W)]  # (B, L, h, w)

    def _forward_sparse(self, feature: Tensor, image_size: tuple[int, int]) -> Tensor:
        """The same result for steps ``k = 8 / s >= 4`` (the input and pool1 streams), computing
        conv1 only at the 3 x 3 cells around each grid cell that conv2 reads (9 / k^2 of the
        map: 14% for the input stream), which is most of the stream's time and memory.

        Each grid cell gets a 5 x 5 patch of the zero-padded feature; conv1 without padding
        gives its 3 x 3 outputs, cells outside the map are zeroed (they are conv2's padding),
        coordinates are appended, conv2 without padding gives the cell's prediction.
        """
        H, W = image_size
        k, s = STRIDE // self.stride, self.stride
        b, cin, hs, ws = feature.shape
        nh, nw = (hs - 1) // k + 1, (ws - 1) // k + 1
        dev = feature.device
        rows = (k * torch.arange(nh, device=dev))[:, None] + torch.arange(5, device=dev)  # (nh, 5)
        cols = (k * torch.arange(nw, device=dev))[:, None] + torch.arange(5, device=dev)  # (nw, 5)
        fp = F.pad(feature, (2, 2, 2, 2))  # (B, Cin, hs + 4, ws + 4); row r at r + 2
        g = fp[:, :, rows.reshape(-1)][:, :, :, cols.reshape(-1)]  # (B, Cin, nh 5, nw 5)
        g = g.view(b, cin, nh, 5, nw, 5).permute(0, 2, 4, 1, 3, 5)  # (B, nh, nw, Cin, 5, 5)
        g = g.reshape(b * nh * nw, cin, 5, 5)
        y = F.relu(F.conv2d(g, self.conv1.weight, self.conv1.bias))  # (N, 128, 3, 3)
        pos_r = (k * torch.arange(nh, device=dev))[:, None] + torch.arange(-1, 2, device=dev)  # (nh, 3)
        pos_c = (k * torch.arange(nw, device=dev))[:, None] + torch.arange(-1, 2, device=dev)  # (nw, 3)
        ok_r = ((pos_r >= 0) & (pos_r < hs)).to(y.dtype)  # (nh, 3)
        ok_c = ((pos_c >= 0) & (pos_c < ws)).to(y.dtype)  # (nw, 3)
        valid = ok_r[:, None, :, None] * ok_c[None, :, None, :]  # (nh, nw, 3, 3)
        valid = valid.reshape(1, nh * nw, 1, 3, 3).expand(b, -1, -1, -1, -1).reshape(-1, 1, 3, 3)
        y = y * valid  # (N, 128, 3, 3), zero outside the map
        if self.coord_maps:
            norm_h, norm_w = self._coord_norm(image_size)
            cx = (s * pos_c.to(y.dtype) + 0.5) / norm_w  # (nw, 3)
            cy = (s * pos_r.to(y.dtype) + 0.5) / norm_h  # (nh, 3)
            gx = cx[None, :, None, :].expand(nh, nw, 3, 3)  # (nh, nw, 3, 3)
            gy = cy[:, None, :, None].expand(nh, nw, 3, 3)  # (nh, nw, 3, 3)
            coords = torch.stack([gx, gy], dim=2).reshape(1, nh * nw, 2, 3, 3)  # (1, nh nw, 2, 3, 3)
            coords = coords.expand(b, -1, -1, -1, -1).reshape(-1, 2, 3, 3)  # (N, 2, 3, 3)
            y = torch.cat([y, coords * valid], dim=1)  # (N, 130, 3, 3)
        out = F.conv2d(y, self.conv2.weight, self.conv2.bias)  # (N, L, 1, 1)
        out = out.view(b, nh, nw, -1).permute(0, 3, 1, 2)  # (B, L, nh, nw)
        return out[:, :, :grid_size(H), :grid_size(W)]  # (B, L, h, w)


class LocationHead(nn.Module):
    """The multi-scale location streams and their fusion.

    ``forward(features, image_size) -> (fused (B, L, h, w), {stream: (B, L, h, w)}, content)``.
    Fusion ``'concat'`` (paper): concat the M predictions (M L channels) + 1x1 conv -> L.
    Fusion ``'plain_sum'`` (the paper's "PFN fusing summation"): ``sum_m pred_m``, an
    element-wise sum with no parameters (each stream is trained to equal the target, so the sum
    is pulled towards M times it: the contrast the paper draws with the learned 1x1 conv).
    Fusion ``'sum'`` (our variant): ``sum_m a_m * pred_m + b`` with one learnable weight per
    stream and channel, initialised to ``1 / M``. With one stream the fused output *is* that
    stream's prediction (identity, no parameters).

    ``channels`` names the L output channels (``config.ENCODING_CHANNELS``) and ``unit`` > 0
    turns on size-consistent locations (module docstring): streams and fusion then work on the
    raw offsets in units of ``unit`` pixels, and every returned map is ``anchor + raw * unit /
    (W, H)``. ``content`` is the fused map before the anchor is added (the raw offsets; with
    ``unit = 0`` the fused map itself): what the count head reads.
    """

    def __init__(self, streams: dict[str, tuple[int, int]], out_channels: int,
                 mid_channels: int = 128, coord_maps: bool = True, fusion: str = "concat",
                 channels: tuple[str, ...] | None = None, unit: float = 0.0) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion {fusion!r}: choose one of {FUSIONS}")
        if unit > 0 and (channels is None or len(channels) != out_channels):
            raise ValueError(f"location unit {unit}: needs the names of the {out_channels} channels")
        self.names = tuple(streams)
        self.fusion = fusion
        self.unit = float(unit)
        self.channels = tuple(channels or ())
        self.streams = nn.ModuleDict({
            name: LocationStream(cin, stride, out_channels, mid_channels, coord_maps,
                                 constant_coords=unit > 0)
            for name, (cin, stride) in streams.items()})
        m = len(self.names)
        self.fuse: nn.Module | None = None
        self.sum_weight: nn.Parameter | None = None
        self.sum_bias: nn.Parameter | None = None
        if m > 1 and fusion == "concat":
            self.fuse = nn.Conv2d(m * out_channels, out_channels, 1)
        elif m > 1 and fusion == "sum":
            self.sum_weight = nn.Parameter(torch.full((m, 1, out_channels, 1, 1), 1.0 / m))
            self.sum_bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def reset_fusion(self) -> None:
        """Re-apply the sum fusion's ``1 / M`` start (after a blanket Gaussian init)."""
        if self.sum_weight is not None and self.sum_bias is not None:
            with torch.no_grad():
                self.sum_weight.fill_(1.0 / len(self.names))
                self.sum_bias.zero_()

    def _anchor_and_scale(self, h: int, w: int, image_size: tuple[int, int],
                          like: Tensor) -> tuple[Tensor, Tensor]:
        """``anchor (1, L, h, w)``: the cell's normalised position on position channels, 0 on
        offsets and sizes; ``scale (1, L, 1, 1)``: ``unit / W`` on x channels, ``unit / H`` on y."""
        H, W = image_size
        pos = coordinate_maps(h, w, STRIDE, H, W, like)  # (1, 2, h, w): cell j on pixel 8j
        zero = torch.zeros_like(pos[:, :1])  # (1, 1, h, w)
        anchor = torch.cat([(pos[:, :1] if n in X_CHANNELS else pos[:, 1:])
                            if n in POSITION_CHANNELS else zero for n in self.channels], dim=1)
        scale = torch.tensor([self.unit / (W if n in X_CHANNELS else H) for n in self.channels],
                             device=like.device, dtype=like.dtype).view(1, -1, 1, 1)
        return anchor, scale  # (1, L, h, w), (1, L, 1, 1)

    def forward(self, features: dict[str, Tensor],
                image_size: tuple[int, int]) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        preds = {n: self.streams[n](features[n], image_size) for n in self.names}  # (B, L, h, w)
        stacked = [preds[n] for n in self.names]
        if len(stacked) == 1:
            fused = stacked[0]  # (B, L, h, w)
        elif self.fuse is not None:
            fused = self.fuse(torch.cat(stacked, dim=1))  # (B, M L, h, w) -> (B, L, h, w)
        elif self.fusion == "plain_sum":
            fused = torch.stack(stacked).sum(0)  # (M, B, L, h, w) -> (B, L, h, w)
        else:
            assert self.sum_weight is not None and self.sum_bias is not None
            fused = (torch.stack(stacked) * self.sum_weight).sum(0) + self.sum_bias  # (B, L, h, w)
        if self.unit <= 0:
            return fused, preds, fused
        anchor, scale = self._anchor_and_scale(*fused.shape[-2:], image_size, fused)
        located = {n: anchor + p * scale for n, p in preds.items()}  # (B, L, h, w) normalised
        return anchor + fused * scale, located, fused


def _adaptive_pool_matrix(n: int, p: int, like: Tensor) -> Tensor:
    """``(p, n)`` averaging matrix of ``adaptive_avg_pool`` from n to p cells (bin i covers
    ``[floor(i n / p), ceil((i + 1) n / p))``, as PyTorch). Written as a matmul so the exported
    ONNX graph needs no AdaptiveAvgPool (which ONNX only has for divisible sizes)."""
    starts = torch.tensor([(i * n) // p for i in range(p)], device=like.device)  # (p,)
    ends = torch.tensor([-((-(i + 1) * n) // p) for i in range(p)], device=like.device)  # (p,)
    cols = torch.arange(n, device=like.device)  # (n,)
    inside = (cols[None] >= starts[:, None]) & (cols[None] < ends[:, None])  # (p, n)
    return inside.to(like.dtype) / (ends - starts).to(like.dtype)[:, None]  # (p, n)


class CountHead(nn.Module):
    """Instance numbers: ``(B, Cin, h, w) -> (B, C)``.

    3x3 conv stride 2 pad 1 -> ``channels`` + ReLU, adaptive average pool to ``pool x pool``
    (our reading of the paper's fixed-size fc input: any image size works), fc ``hidden`` + ReLU,
    fc ``C``. No activation on the output (Euclidean regression, as in the paper).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128,
                 hidden: int = 1024, pool: int = COUNT_POOL) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.pool = pool
        self.fc1 = nn.Linear(channels * pool * pool, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x))  # (B, 128, ceil(h/2), ceil(w/2))
        ph = _adaptive_pool_matrix(y.shape[-2], self.pool, y)  # (p, h2)
        pw = _adaptive_pool_matrix(y.shape[-1], self.pool, y)  # (p, w2)
        y = torch.einsum("ph,bchw,qw->bcpq", ph, y, pw).flatten(1)  # (B, 128 p p)
        y = F.relu(self.fc1(y))  # (B, 1024)
        return self.fc2(y)  # (B, C)


class DensityCountHead(nn.Module):
    """Instance numbers as a sum of per-cell counts: ``(B, Cin, h, w) -> (B, C)``.

    3x3 conv stride 2 pad 1 -> ``channels`` + ReLU, 1x1 conv ``hidden`` + ReLU, 1x1 conv ``C``
    (the fc layers of :class:`CountHead` applied per cell), softplus -> ``(B, C, h/2, w/2)``
    non-negative counts per cell, summed over the cells. Padding an image with background adds
    cells whose count the training drives to ~0, so the prediction stays the same.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128,
                 hidden: int = 1024) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, num_classes, 1)

    def density(self, x: Tensor) -> Tensor:
        """``(B, C, ceil(h/2), ceil(w/2))`` instances per cell and class."""
        y = F.relu(self.conv(x))  # (B, 128, h2, w2)
        y = F.relu(self.fc1(y))  # (B, hidden, h2, w2)
        return F.softplus(self.fc2(y) + DENSITY_OFFSET)  # (B, C, h2, w2)

    def forward(self, x: Tensor) -> Tensor:
        return self.density(x).sum(dim=(2, 3))  # (B, C)

"""The PFN networks: one backbone plus the heads a training stage needs, and the two-network
test-time system of the paper.

>>> from pfn_napari.config import ModelConfig
>>> net = build_network(ModelConfig(backbone="vgg16", num_classes=2), "instance")
>>> out = net(torch.zeros(1, 3, 65, 97))          # 0..255 RGB
>>> tuple(out.locations.shape), tuple(out.counts.shape), out.seg_logits is None
((1, 6, 9, 13), (1, 2), True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from ..config import ENCODING_CHANNELS, ConfigError, ModelConfig
from .backbones import Backbone, build_backbone
from .heads import CategoryHead, CountHead, DensityCountHead, LocationHead, init_new_layers

NETWORK_KINDS = ("category", "instance", "unified")


@dataclass
class NetOutputs:
    """What a PFN network (or system) returns, the same in training and evaluation.

    All maps are on the stride-8 grid, ``h = grid_size(H)``, ``w = grid_size(W)``.

    * ``seg_logits``: ``(B, C + 1, h, w)`` class logits (category / unified), else None;
    * ``locations``: ``(B, L, h, w)`` fused location prediction (instance / unified), channels
      ``config.ENCODING_CHANNELS[encoding]``, normalised by the *network input's* W and H;
    * ``stream_locations``: stream name -> ``(B, L, h, w)``, each stream's own prediction;
    * ``counts``: ``(B, C)`` predicted instance numbers (no activation), else None;
    * ``count_density``: ``(B, C, ceil(h/2), ceil(w/2))`` instances per cell and class, cell j
      on grid cell 2j (``model.count_head='density'`` only), else None.
    """

    seg_logits: Tensor | None = None
    locations: Tensor | None = None
    stream_locations: dict[str, Tensor] = field(default_factory=dict)
    counts: Tensor | None = None
    count_density: Tensor | None = None

    def float(self) -> NetOutputs:
        """The same outputs in float32 (the losses after a mixed-precision forward pass)."""
        def f(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.float()

        return NetOutputs(seg_logits=f(self.seg_logits), locations=f(self.locations),
                          stream_locations={k: v.float() for k, v in self.stream_locations.items()},
                          counts=f(self.counts), count_density=f(self.count_density))


class PFNNet(nn.Module):
    """A backbone with the heads of one kind.

    * ``'category'``: backbone + fc8 (stage 1);
    * ``'instance'``: backbone + location streams + count head (stage 2);
    * ``'unified'``: all three heads on one backbone ("one unified network" ablation).

    ``forward(images (B, 3, H, W) float32 0..255 RGB) -> NetOutputs``.
    """

    def __init__(self, cfg: ModelConfig, kind: str, backbone: Backbone | None = None) -> None:
        super().__init__()
        if kind not in NETWORK_KINDS:
            raise ConfigError(f"network kind {kind!r}: choose one of {NETWORK_KINDS}")
        cfg.validate()
        self.cfg = cfg
        self.kind = kind
        self.backbone: Backbone = backbone if backbone is not None else build_backbone(
            cfg.backbone, cfg.fc7_channels, ceil_mode=cfg.ceil_mode,
            dropout=cfg.dropout, output_stride=cfg.lite_output_stride)
        ch = self.backbone.channels
        L = len(ENCODING_CHANNELS[cfg.encoding])
        self.category_head: CategoryHead | None = None
        self.location_head: LocationHead | None = None
        self.count_head: CountHead | DensityCountHead | None = None
        if kind in ("category", "unified"):
            self.category_head = CategoryHead(ch["fc7"], cfg.num_classes)
        if kind in ("instance", "unified"):
            streams = {n: (ch[n], self.backbone.strides[n]) for n in cfg.streams}
            self.location_head = LocationHead(streams, L, cfg.stream_channels, cfg.coord_maps,
                                              cfg.fusion, ENCODING_CHANNELS[cfg.encoding],
                                              cfg.location_unit)
            count_in = {"both": ch["fc7"] + L, "category": ch["fc7"], "instance": L}
            if cfg.count_head == "density":
                self.count_head = DensityCountHead(count_in[cfg.count_features], cfg.num_classes,
                                                   cfg.count_channels, cfg.count_hidden)
            else:
                self.count_head = CountHead(count_in[cfg.count_features], cfg.num_classes,
                                            cfg.count_channels, cfg.count_hidden)
        for head in self.heads():
            init_new_layers(head)
        if self.location_head is not None:
            self.location_head.reset_fusion()
        if self.backbone.new_prefixes:  # e.g. Lite0's fc7 projection: a new layer too
            for name, module in self.backbone.named_modules():
                if any(f"{name}.".startswith(p) for p in self.backbone.new_prefixes):
                    init_new_layers(module)

    def heads(self) -> list[nn.Module]:
        return [h for h in (self.category_head, self.location_head, self.count_head) if h is not None]

    def forward(self, images: Tensor) -> NetOutputs:
        H, W = images.shape[-2:]
        feats = self.backbone(images)  # fc7: (B, F, h, w)
        out = NetOutputs()
        if self.category_head is not None:
            out.seg_logits = self.category_head(feats["fc7"])  # (B, C+1, h, w)
        if self.location_head is not None and self.count_head is not None:
            fused, streams, content = self.location_head(feats, (int(H), int(W)))  # (B, L, h, w)
            out.locations, out.stream_locations = fused, streams
            mode = self.cfg.count_features
            if mode == "both":
                x = torch.cat([feats["fc7"], content], dim=1)  # (B, F + L, h, w)
            elif mode == "category":
                x = feats["fc7"]  # (B, F, h, w)
            else:
                x = content  # (B, L, h, w)
            if isinstance(self.count_head, DensityCountHead):
                out.count_density = self.count_head.density(x)  # (B, C, h2, w2)
                out.counts = out.count_density.sum(dim=(2, 3))  # (B, C)
            else:
                out.counts = self.count_head(x)  # (B, C)
        return out

    # --- training helpers -------------------------------------------------------------------

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(pretrained, new)`` trainable parameters, for the two learning rates of the paper
        (backbone layers an ImageNet file or stage 1 initialises vs. the heads and new layers)."""
        prefixes = tuple(f"backbone.{p}" for p in self.backbone.new_prefixes)
        pretrained, new = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("backbone.") and not name.startswith(prefixes):
                pretrained.append(p)
            else:
                new.append(p)
        return pretrained, new

    def init_from(self, state_dict: Mapping[str, Tensor],
                  include_category_head: bool = False) -> list[str]:
        """Copy the backbone weights of a (category-stage) network into this one.

        ``state_dict`` is a :class:`PFNNet`'s, or a :class:`PFNSystem`'s (its ``category.``
        net is used). fc8 is dropped unless ``include_category_head`` (and this net has one).
        Returns the copied keys; raises :class:`ValueError` if a backbone tensor is missing or
        of another shape.
        """
        sd = dict(state_dict)
        if any(k.startswith("category.") for k in sd):
            sd = {k[len("category."):]: v for k, v in sd.items() if k.startswith("category.")}
        own = self.state_dict()
        keep = ("backbone.",) + (("category_head.",) if include_category_head else ())
        for k, v in own.items():
            if k.startswith("backbone.") and (k not in sd or sd[k].shape != v.shape):
                got = "missing" if k not in sd else f"shape {tuple(sd[k].shape)}"
                raise ValueError(f"init_from: backbone tensor {k!r} is {got}, expected "
                                 f"{tuple(v.shape)} (another backbone or fc7 width?)")
        copied = {k: v for k, v in sd.items()
                  if k.startswith(keep) and k in own and own[k].shape == v.shape}
        self.load_state_dict(copied, strict=False)
        return sorted(copied)

    def freeze_all_but_count_head(self) -> None:
        """Separate fine-tuning of the instance numbers: only the count head trains."""
        for p in self.parameters():
            p.requires_grad_(False)
        if self.count_head is None:
            raise ValueError(f"a {self.kind!r} network has no count head")
        for p in self.count_head.parameters():
            p.requires_grad_(True)

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)


def build_network(cfg: ModelConfig, kind: str, backbone: Backbone | None = None) -> PFNNet:
    """A :class:`PFNNet` of ``kind`` ('category', 'instance', 'unified') from the config.

    Backbone layers start from He-normal init; load ImageNet weights with
    :func:`pfn_napari.model.weights.load_backbone_weights`. ``backbone`` reuses an existing
    backbone module (it must match ``cfg``). Bad config values raise
    :class:`~pfn_napari.config.ConfigError`.
    """
    return PFNNet(cfg, kind, backbone)


class PFNSystem(nn.Module):
    """The test-time model of the paper: a category network and an instance network (or one
    unified network, ``category=None``). ``forward(images) -> NetOutputs`` with ``seg_logits``
    from the category net and ``locations`` / ``stream_locations`` / ``counts`` from the
    instance net. A stage-1 system has ``instance=None`` (only ``seg_logits``). One
    ``state_dict`` (keys ``category.*``, ``instance.*``) holds both.
    """

    def __init__(self, category: PFNNet | None, instance: PFNNet | None) -> None:
        super().__init__()
        if category is None and instance is None:
            raise ValueError("PFNSystem needs a category or an instance network")
        if category is None and instance is not None and instance.category_head is None:
            raise ValueError("PFNSystem without a category network needs a unified network")
        self.category = category
        self.instance = instance

    @property
    def cfg(self) -> ModelConfig:
        net = self.instance if self.instance is not None else self.category
        assert net is not None
        return net.cfg

    @property
    def complete(self) -> bool:
        """True when it yields class logits, locations and counts (a stage-2/unified system)."""
        return self.instance is not None and self.instance.location_head is not None

    def forward(self, images: Tensor) -> NetOutputs:
        out = self.instance(images) if self.instance is not None else NetOutputs()
        if self.category is not None:
            out.seg_logits = self.category(images).seg_logits  # (B, C+1, h, w)
        if out.count_density is not None and out.seg_logits is not None and self.cfg.count_gate:
            out.counts = gated_counts(out.count_density, out.seg_logits)  # (B, C)
        return out


def gated_counts(density: Tensor, seg_logits: Tensor) -> Tensor:
    """``(B, C)`` counts from per-cell counts weighted by the category network's belief in
    each class there: ``g_c = sum_cells density_c * P(c | cell)`` (``model.count_gate``).

    ``density`` is ``(B, C, ceil(h/2), ceil(w/2))`` (cell j on grid cell 2j), ``seg_logits``
    ``(B, C + 1, h, w)``. Background cells add nothing, however large the canvas: a softplus
    density is never exactly 0, and 0.001 per cell over the 1,200 cells of a 640 x 480 photo
    is more than one phantom instance.
    """
    probs = torch.softmax(seg_logits.float(), dim=1)[:, 1:, ::2, ::2]  # (B, C, h2, w2)
    h2, w2 = density.shape[-2:]
    return (density.float() * probs[:, :, :h2, :w2]).sum(dim=(2, 3))  # (B, C) float32


def build_system(cfg: ModelConfig, stage: str) -> PFNSystem:
    """The system a checkpoint of ``stage`` holds: 'category' -> category net only;
    'instance' and 'counts' -> category + instance nets; 'unified' -> one unified net."""
    if stage == "category":
        return PFNSystem(build_network(cfg, "category"), None)
    if stage in ("instance", "counts"):
        return PFNSystem(build_network(cfg, "category"), build_network(cfg, "instance"))
    if stage == "unified":
        return PFNSystem(None, build_network(cfg, "unified"))
    raise ConfigError(f"stage {stage!r}: 'category', 'instance', 'unified' or 'counts'")

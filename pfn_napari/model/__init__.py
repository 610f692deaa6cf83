"""PFN networks: backbones, heads, the category / instance / unified nets, the two-network
test-time system, ImageNet weight loading, the dense CRF and export.

Python entry points::

    from pfn_napari.model import build_network, build_system, PFNSystem, load_backbone_weights
    net = build_network(cfg.model, "category")      # PFNNet
    load_backbone_weights(net, "vgg16-imagenet.pth")  # torchvision file, converted DeepLab's way
    out = net(images)                                 # NetOutputs, (B, 3, H, W) 0..255 RGB in
"""

from .backbones import (AlexNetLargeFOV, Backbone, EfficientNetLite, EfficientNetLite0,
                        VGG16LargeFOV, align_to_grid, build_backbone)
from .pfn import NETWORK_KINDS, NetOutputs, PFNNet, PFNSystem, build_network, build_system
from .weights import (convert_torchvision_alexnet, convert_torchvision_vgg16,
                      default_backbone_weights, load_backbone_weights)

__all__ = [
    "AlexNetLargeFOV", "Backbone", "EfficientNetLite", "EfficientNetLite0", "VGG16LargeFOV",
    "align_to_grid", "build_backbone", "NETWORK_KINDS", "NetOutputs", "PFNNet", "PFNSystem",
    "build_network", "build_system", "convert_torchvision_alexnet", "convert_torchvision_vgg16",
    "default_backbone_weights", "load_backbone_weights",
]

"""The model zoo and ``create_model``.

Zoo models (``MODELS``): CIFAR ResNets (resnet8 .. resnet110, resnet8x4, resnet32x4), wide
ResNets (wrn, wrn_16_1 .. wrn_40_2), mobilenetv2 (CIFAR strides), and the small mlp, cnn1d,
cnn2d and logreg. ``create_model`` also builds ``timm:NAME`` and ``torchvision:NAME``
models (never downloading weights) and loads local weights files.
"""

from kdforge.models import cifar_resnet, mobilenetv2, simple, wrn  # noqa: F401  (registers)
from kdforge.models.cifar_resnet import BasicBlock, CifarResNet
from kdforge.models.factory import count_parameters, create_model, layer_names, load_weights
from kdforge.models.mobilenetv2 import InvertedResidual, MobileNetV2
from kdforge.models.registry import MODELS
from kdforge.models.simple import MLP, CNN1d, CNN2d, LogisticRegression
from kdforge.models.wrn import WideBasicBlock, WideResNet

__all__ = [
    "MLP",
    "MODELS",
    "BasicBlock",
    "CNN1d",
    "CNN2d",
    "CifarResNet",
    "InvertedResidual",
    "LogisticRegression",
    "MobileNetV2",
    "WideBasicBlock",
    "WideResNet",
    "count_parameters",
    "create_model",
    "layer_names",
    "load_weights",
]

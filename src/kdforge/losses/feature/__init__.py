"""Feature knowledge: terms that compare intermediate features of the student and the teacher.

Every term names its layers (module paths as in ``model.named_modules()``; ``"path@input"``
takes a module's input, e.g. a pre-activation) and works on feature maps ``(B, C, L)`` or
``(B, C, H, W)``; where a method makes sense on vectors ``(B, D)`` too (FitNets, FT, VID,
AB), a vector is treated as a map with one position. Terms with learnable adapters build
them in :meth:`~kdforge.losses.base.LossTerm.setup` from the first batch's shapes, on the
features' device, before the optimizer exists.

The defaults are the papers'; the default weights are those of the CRD paper's CIFAR-100
benchmark (Tian et al. 2020, repository HobbitLong/RepDistiller) where it has the method.
"""

# Imported in this order so the terms register in the order they always had.
# isort: off
from kdforge.losses.feature.fitnet import FitNet
from kdforge.losses.feature.at import AT, attention_map as attention_map
from kdforge.losses.feature.nst import NST
from kdforge.losses.feature.ft import FT, Paraphraser as Paraphraser, Translator as Translator
from kdforge.losses.feature.ab import AB, AB_SCALE as AB_SCALE
from kdforge.losses.feature.vid import VID, VIDHead as VIDHead
from kdforge.losses.feature.reviewkd import (
    ABF as ABF,
    ReviewKD,
    hierarchical_context_loss as hierarchical_context_loss,
)
# isort: on

__all__ = ["AB", "AT", "FT", "NST", "VID", "FitNet", "ReviewKD"]

"""Loss terms: response (logits), feature and relation knowledge. Each is registered by name."""

from kdforge.losses.base import LOSSES, LossTerm, build_loss, check_logits_match, register_loss
from kdforge.losses.response import CE, KD, SoftCE

__all__ = ["CE", "KD", "LOSSES", "LossTerm", "SoftCE", "build_loss", "check_logits_match",
           "register_loss"]

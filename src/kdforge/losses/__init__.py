"""Loss terms: response (logits), feature and relation knowledge. Each is registered by name;
``kdforge list losses`` prints them with their papers."""

from kdforge.losses.adapters import Regressor
from kdforge.losses.base import (
    LOSSES,
    LossTerm,
    WeightSchedule,
    build_loss,
    check_logits_match,
    register_loss,
)
from kdforge.losses.contrastive import *  # noqa: F403  (registers the terms)
from kdforge.losses.ensemble import *  # noqa: F403  (registers aekd)
from kdforge.losses.feature import *  # noqa: F403
from kdforge.losses.relation import *  # noqa: F403
from kdforge.losses.response import *  # noqa: F403
from kdforge.losses.response import CE, KD, SoftCE

__all__ = ["CE", "KD", "LOSSES", "LossTerm", "Regressor", "SoftCE", "WeightSchedule",
           "build_loss", "check_logits_match", "register_loss"]

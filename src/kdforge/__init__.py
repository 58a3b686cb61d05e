"""kdforge: knowledge distillation for PyTorch.

A distillation step is a student forward pass, a teacher signal, and a weighted sum of loss
terms over the two::

    import kdforge
    distiller = kdforge.Distiller(student, teacher, [kdforge.CE(weight=0.1), kdforge.KD(T=4, weight=0.9)])
    for x, y in loader:
        out = distiller(x, y)             # out.loss, out.parts["kd"], ...
        out.loss.backward(); opt.step(); opt.zero_grad()
"""

from kdforge.core import (
    Batch,
    CheckpointError,
    ConfigError,
    DataError,
    FeatureTap,
    KDForgeError,
    NonFiniteLossError,
    Outputs,
    Registry,
    RunDirError,
    ShapeMismatchError,
    StepResult,
    StoreError,
    to_outputs,
)
from kdforge.data import DATASETS, load_dataset
from kdforge.distill import Distiller
from kdforge.engine import Trainer, evaluate
from kdforge.losses import CE, KD, LOSSES, LossTerm, SoftCE, build_loss, register_loss
from kdforge.models import MODELS, count_parameters, create_model
from kdforge.teachers import EnsembleTeacher, ModuleTeacher, SoftLabelStore, StoredTeacher, Teacher

__version__ = "0.1.0"

__all__ = [
    "CE", "DATASETS", "KD", "LOSSES", "MODELS", "Batch", "CheckpointError", "ConfigError",
    "DataError", "Distiller", "EnsembleTeacher", "FeatureTap", "KDForgeError", "LossTerm",
    "ModuleTeacher", "NonFiniteLossError", "Outputs", "Registry", "RunDirError",
    "ShapeMismatchError",
    "SoftCE", "SoftLabelStore", "StepResult", "StoreError", "StoredTeacher", "Teacher", "Trainer", "build_loss", "count_parameters",
    "create_model", "evaluate", "load_dataset", "register_loss", "to_outputs",
]

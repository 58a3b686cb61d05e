"""Ground floor of kdforge: types and helpers that import nothing else of the package."""

from kdforge.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    KDForgeError,
    NonFiniteLossError,
    RunDirError,
    ShapeMismatchError,
    StoreError,
)
from kdforge.core.outputs import Batch, Outputs, StepResult, to_outputs
from kdforge.core.registry import Registry
from kdforge.core.taps import FeatureTap

__all__ = [
    "Batch",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FeatureTap",
    "KDForgeError",
    "NonFiniteLossError",
    "RunDirError",
    "Outputs",
    "Registry",
    "ShapeMismatchError",
    "StepResult",
    "StoreError",
    "to_outputs",
]

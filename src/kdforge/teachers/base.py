"""The teacher contract (defined in :mod:`kdforge.core.teacher`, re-exported here)."""

from kdforge.core.teacher import GradientMode, Teacher

__all__ = ["GradientMode", "Teacher"]

"""The store benchmark's spec (``benchmarks/store.yaml``), validated like every config.

Unknown keys and bad values raise :class:`~kdforge.core.errors.ConfigError` naming the key,
what is wrong and what is allowed (:func:`kdforge.jobs.specs.read_spec`). :func:`load_store_spec` returns the spec as the plain
dict the benchmark reads, with every default filled in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from kdforge.jobs.specs import Section, read_spec
from kdforge.store import VALUE_FORMATS

#: the store's value formats (:data:`kdforge.store.VALUE_FORMATS`)
ValueFormat = Literal["fp16", "uint8"]


def _mapping(value: Any) -> dict[str, Any]:
    """A section that may be left empty (``optim:`` with nothing after it)."""
    return {} if value is None else value


class TeacherSpec(Section):
    """``teacher:`` the teacher run (trained first; a finished identical run is reused)."""

    model: dict[str, Any] = Field(description="the teacher model, e.g. {name: resnet20}")
    epochs: int | None = Field(None, gt=0, description="default: the students' epochs")
    optim: dict[str, Any] | None = Field(None, description="default: the students' optim")
    schedule: dict[str, Any] | None = Field(None, description="default: the students'")

    @field_validator("model")
    @classmethod
    def _named(cls, model: dict[str, Any]) -> dict[str, Any]:
        if "name" not in model:
            raise ValueError("teacher.model must name a model, e.g. {name: resnet20}")
        return model


class StoreSpec(Section):
    """``store:`` how the stores are made (one per value format) and read."""

    views_per_sample: int = Field(50, gt=0)
    top_k: int = Field(5, gt=0)
    value_format: ValueFormat | None = None
    value_formats: list[ValueFormat] | ValueFormat | None = Field(
        None, description="one store and one store_kd run per format; the first is the main")
    batch_size: int = Field(1024, gt=0, description="views per teacher forward")
    samples_per_shard: int = Field(4096, gt=0)
    repeats: int = Field(1, gt=0, description="views per loaded sample in a store_kd batch")

    @model_validator(mode="after")
    def _formats(self) -> StoreSpec:
        if self.value_format is not None and self.value_formats is not None:
            raise ValueError("give store.value_format or store.value_formats, not both")
        formats = self.formats
        if not formats or len(set(formats)) != len(formats):
            raise ValueError(f"store.value_formats must be distinct values of "
                             f"{list(VALUE_FORMATS)}; got {formats}")
        return self

    @property
    def formats(self) -> list[str]:
        chosen = self.value_formats or [self.value_format or "uint8"]
        return [chosen] if isinstance(chosen, str) else list(chosen)


class TimingSpec(Section):
    """``timing:`` the timed rounds."""

    repeats: int = Field(5, gt=0, description="bare-teacher passes before and after generation")
    steps: int = Field(100, gt=0, description="teacher forwards and student steps per round")


class ViewSpec(BaseModel):
    """``view:`` the consistent view's augmentation options (``scale``, ``flip``, ...)."""

    model_config = ConfigDict(extra="allow")

    name: str = "consistent"

    @field_validator("name")
    @classmethod
    def _consistent(cls, name: str) -> str:
        if name != "consistent":
            raise ValueError("view.name must be 'consistent' (the view a store replays and the "
                             f"supervised and online runs share); got {name!r}")
        return name


class StoreBenchSpec(Section):
    """The whole spec of ``kdforge bench store``."""

    output_dir: Path = Path("runs/store_bench")
    seed: int = Field(0, description="seed of the teacher run and of the stores' views")
    seeds: list[StrictInt] | None = Field(None, description="the student runs' seeds")
    device: str = "cpu"
    data: dict[str, Any]
    teacher: TeacherSpec
    student: dict[str, Any]
    epochs: int = Field(15, gt=0)
    optim: dict[str, Any] = Field(default_factory=dict)
    schedule: dict[str, Any] = Field(default_factory=dict)
    view: ViewSpec = Field(default_factory=ViewSpec)
    losses: list[dict[str, Any]] = Field(default_factory=lambda: [{"name": "kd", "T": 4}])
    store: StoreSpec = Field(default_factory=StoreSpec)
    timing: TimingSpec = Field(default_factory=TimingSpec)

    @field_validator("optim", "schedule", "store", "timing", "view", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return _mapping(value)

    @field_validator("losses", mode="before")
    @classmethod
    def _default_losses(cls, losses: Any) -> Any:
        return losses or [{"name": "kd", "T": 4}]

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"seeds must be a non-empty list of distinct integers (the "
                             f"student runs' seeds); got {seeds!r}")
        return seeds

    def resolved(self) -> dict[str, Any]:
        """The spec as the benchmark reads it: defaults filled, the view's options as
        ``augment``, the main value format first in ``store.value_formats``."""
        t, s = self.teacher, self.store
        return {
            "output_dir": self.output_dir, "seed": self.seed,
            "seeds": list(self.seeds) if self.seeds is not None else [self.seed],
            "device": self.device, "data": dict(self.data), "student": dict(self.student),
            "epochs": self.epochs, "optim": self.optim, "schedule": self.schedule,
            "augment": dict(self.view.model_extra or {}), "losses": self.losses,
            "teacher": {"model": dict(t.model), "epochs": t.epochs or self.epochs,
                        "optim": self.optim if t.optim is None else t.optim,
                        "schedule": self.schedule if t.schedule is None else t.schedule},
            "store": {"views_per_sample": s.views_per_sample, "top_k": s.top_k,
                      "value_formats": s.formats, "batch_size": s.batch_size,
                      "samples_per_shard": s.samples_per_shard, "repeats": s.repeats},
            "timing": {"repeats": self.timing.repeats, "steps": self.timing.steps},
        }


def load_store_spec(path: str | Path) -> dict[str, Any]:
    """Read and check ``benchmarks/store.yaml``; returns it with every default filled in."""
    spec = read_spec(path, StoreBenchSpec, "store benchmark spec", "benchmarks/store.yaml")
    return spec.resolved()


__all__ = ["StoreBenchSpec", "load_store_spec"]

"""The config of ``kdforge compress``: a trained run, its stages, and how each is fine-tuned.

::

    name: mnist1d-compress
    output_dir: runs
    run: runs/mnist1d-teacher        # the trained model: compressed, and the teacher
    stages:
      - {name: prune, method: structured, params_ratio: 0.4}
      - {name: int8}                  # route: auto (pt2e, else onnxruntime)
      - {name: onnx}
    finetune:                         # one fine-tune per stage and chain, at this budget
      epochs: 10
      optim: {name: adamw, lr: 0.002, weight_decay: 0.0}
    chains:                           # each chain fine-tunes every stage its own way
      none: []
      ce: [{name: ce}]
      kd: [{name: kd, T: 4}]
      ce+kd: [{name: ce, weight: 0.1}, {name: kd, weight: 0.9, T: 4}]

The data set is the run's own (``data`` overrides it). Every stage's model is kept on disk
under ``output_dir/name/CHAIN/STAGE/``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from kdforge.config import (
    DataConfig,
    LossConfig,
    OptimConfig,
    ScheduleConfig,
    _Named,
    _Strict,
)


class StageConfig(_Named):
    """One stage: ``{name: prune, method: structured, params_ratio: 0.4}`` (``kdforge list
    compress-stages``; the keys besides ``name`` are the stage's options)."""

    name: str
    finetune: bool = Field(True, description="fine-tune after this stage (each chain)")


class FinetuneConfig(_Strict):
    """The budget of every fine-tune (each stage, each chain)."""

    epochs: int = Field(5, gt=0)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(
        name="adamw", lr=2e-3, weight_decay=0.0))
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    batch_size: int | None = Field(None, gt=0, description="default: the data section's")
    device: str = Field("auto", description="the fine-tune's device (measures are on CPU)")


class LatencyConfig(_Strict):
    """How latency is measured: median of repeated runs after warm-up, on CPU."""

    batches: list[int] = Field(default_factory=lambda: [1, 64])
    threads: int = Field(1, gt=0, description="torch / onnxruntime intra-op threads")
    warmup: int = Field(10, ge=0)
    repeats: int = Field(50, gt=0)
    rounds: int = Field(5, gt=0, description="interleaved rounds over the variants")


class CompressConfig(_Strict):
    """``kdforge compress CONFIG``: see the module docstring."""

    name: str
    output_dir: str = "runs"
    seed: int = 0
    run: str = Field(description="the trained run directory to compress (also the teacher)")
    data: DataConfig | None = Field(None, description="default: the run's data section")
    stages: list[StageConfig] = Field(min_length=1)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    chains: dict[str, list[LossConfig]] = Field(default_factory=lambda: {
        "none": [], "ce": [LossConfig(name="ce")],
        "kd": [LossConfig.model_validate({"name": "kd", "T": 4})]})
    latency: LatencyConfig = Field(default_factory=LatencyConfig)

    @model_validator(mode="after")
    def _chains(self) -> CompressConfig:
        if "none" not in self.chains or self.chains["none"]:
            raise ValueError("chains must hold 'none: []' (the stages without fine-tuning, "
                             "the reference every fine-tune is compared with)")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}; give each stage once")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


__all__ = ["CompressConfig", "FinetuneConfig", "LatencyConfig", "StageConfig"]

"""The configuration of a run: pydantic models, YAML files and ``--set key=value`` overrides.

A run is fully described by one :class:`RunConfig`; the resolved config is written into the
run directory, so every run can be reproduced from it. Unknown keys and bad values raise
:class:`~kdforge.core.errors.ConfigError` naming the key and the allowed values.

Sections that name a registered thing (``data``, ``student``, ``teacher``, ``losses``) take
the thing's own options beside ``name``; those are checked against the registered factory
when the run is built, before any training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from kdforge.config_yaml import apply_override, check_plain, deep_copy, read_yaml_mapping
from kdforge.core.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _Named(BaseModel):
    """A section naming a registered thing; extra keys are that thing's options."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NormalizeStats(_Strict):
    """``data.normalize: {mean: [...], std: [...]}``: one value per input channel."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _per_channel(self) -> NormalizeStats:
        if len(self.mean) != len(self.std):
            raise ValueError(f"normalize has {len(self.mean)} means but {len(self.std)} stds; "
                             "give one of each per channel")
        if min(self.std) <= 0:
            raise ValueError(f"normalize stds must be positive, got {self.std}")
        return self


class DataConfig(_Named):
    """``data:`` the data set and how it is batched."""

    name: str = Field(description="registered data set: digits, mnist1d, synthetic, ...")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0,
                                description="share of train held out for validation")
    batch_size: int = Field(128, gt=0, description="global training batch size")
    eval_batch_size: int = Field(512, gt=0)
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    classes: list[int] | None = Field(None, description="keep only these classes, relabelled "
                                      "0..n-1 in this order (a task, a specialist's subset)")
    rest: Literal["drop", "merge"] = Field("drop", description="with classes: drop the other "
                                           "classes, or merge them into one extra class n")
    rest_ratio: float | None = Field(None, gt=0.0, description="with rest=merge: keep at most "
                                     "this many merged samples per kept sample")
    normalize: Literal["auto"] | NormalizeStats | None = Field(
        None, description="input normalisation for every split: null (none), auto (per-channel "
        "mean/std of the training set) or {mean: [...], std: [...]} per channel "
        "(kdforge.data.datasets.normalized)")

    @model_validator(mode="after")
    def _class_subset(self) -> DataConfig:
        if self.classes is not None:
            if not self.classes or len(set(self.classes)) != len(self.classes) or min(
                    self.classes) < 0:
                raise ValueError(f"classes must be distinct class indices >= 0, got "
                                 f"{self.classes}")
        elif self.rest != "drop" or self.rest_ratio is not None:
            raise ValueError("'rest' and 'rest_ratio' apply to a class subset: set 'classes'")
        if self.rest_ratio is not None and self.rest != "merge":
            raise ValueError("rest_ratio needs rest: merge")
        return self


class ModelConfig(_Named):
    """A model by registered name (``resnet8``), or ``timm:NAME`` / ``torchvision:NAME``."""

    name: str
    weights: str | None = Field(None, description="local .safetensors or torch state dict")
    init: str | None = Field(None, description="a run directory whose weights of matching "
                             "name and shape initialise this model (a grown head keeps the "
                             "old rows)")


class TeacherConfig(_Named):
    """``teacher:`` a trained model: a run directory, or a model plus weights file. (A
    soft-label store is a :class:`StoreTeacherConfig`.)"""

    run: str | None = Field(None, description="run directory of a trained teacher")
    name: str | None = Field(None, description="model name when not given by run")
    weights: str | None = None
    precision: Precision = "fp32"

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if "store" in self.options:
            raise ValueError(
                "'store' names a soft-label store, a whole teacher on its own: a run takes it "
                "alone (teacher: {store: DIR}), not in a list of teachers; a store is made "
                "from trained teachers, not from another store"
            )
        sources = [k for k in ("run", "name") if getattr(self, k) is not None]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of 'run' (a trained teacher's run directory), 'name' and "
                "'weights' (a model and its weights file), or 'store' (a soft-label store)"
            )
        if self.name is None and self.options:
            raise ValueError(f"with '{sources[0]}', the teacher takes no model options "
                             f"{sorted(self.options)}")
        return self


class StoreTeacherConfig(_Strict):
    """``teacher: {store: DIR}``: a soft-label store made by ``kdforge soft-labels``; the
    teacher is then never run (FKD, Shen & Xing 2022). The run replays the store's views."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True,
                              serialize_by_alias=True)

    path: str = Field(alias="store", description="soft-label store directory")
    fill: Literal["smooth", "renorm"] = Field("smooth", description="the mass outside the "
                                              "top-k: smooth (FKD) or renorm")
    repeats: int = Field(1, ge=1, description="views per loaded sample in a batch")
    verify: bool = Field(True, description="check every shard's checksum before training")


def _teacher_kind(value: Any) -> str:
    """Which teacher section ``value`` is: a store (it has ``store``) or a model."""
    if isinstance(value, StoreTeacherConfig) or (isinstance(value, dict) and "store" in value):
        return "store teacher"
    return "model teacher"


#: ``teacher:`` one model teacher or one store (told apart by a ``store`` key).
OneTeacher = Annotated[
    Annotated[TeacherConfig, Tag("model teacher")] | Annotated[StoreTeacherConfig,
                                                               Tag("store teacher")],
    Discriminator(_teacher_kind),
]


class LossConfig(_Named):
    """One loss term: ``{name: kd, weight: 0.9, T: 4}``."""

    name: str
    weight: float = Field(1.0, ge=0.0)
    start_epoch: float = Field(0.0, ge=0.0, description="weight is 0 before this epoch")
    warmup_epochs: float = Field(0.0, ge=0.0, description="then ramps linearly to weight")
    stop_epoch: float | None = Field(None, gt=0.0, description="weight is 0 from this epoch")


class ViewConfig(_Named):
    """``view:`` what the student and the teacher see (Beyer et al. 2022): ``fixed``,
    ``independent``, ``consistent`` or ``function_matching``, plus augmentation options
    (``scale``, ``ratio``, ``flip`` for images; ``scale``, ``flip``, ``noise_std`` for
    signals; ``alpha``, ``mode``, ``labels`` for function matching)."""

    name: str


class OptimConfig(_Strict):
    """``optim:`` the optimizer (``kdforge list optimizers``) and its settings."""

    name: str = Field("sgd", description="registered optimizer: sgd, adamw, adam, shampoo")
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(_Strict):
    """``schedule:`` the learning-rate schedule (``kdforge list schedules``), per step."""

    name: str = Field("cosine", description="registered schedule: cosine, step, constant")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up from lr/100")
    milestones: list[float] = Field(default_factory=list, description="epochs (step schedule)")
    gamma: float = Field(0.1, gt=0.0)
    min_lr: float = Field(0.0, ge=0.0)


class TrainConfig(_Strict):
    epochs: int = Field(30, gt=0)
    grad_clip: float | None = Field(None, gt=0.0, description="max global grad norm")
    precision: Precision = Field("fp32", description="autocast: bf16 on CPU; fp16/bf16 CUDA")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    eval_every: int = Field(1, gt=0, description="validate every N epochs (and the last)")
    deterministic: bool = True
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the student (CUDA)")
    log_every: int = Field(10, gt=0, description="steps between progress updates")
    tensorboard: bool | Literal["auto"] = Field(
        "auto", description="TensorBoard events in run_dir/tensorboard: auto (when the "
        "tensorboard package imports), true (required), false (never); JSONL always")
    checkpoint_every: int = Field(1, gt=0, description="epochs between checkpoints (and last)")
    on_nonfinite: Literal["stop", "restart"] = Field(
        "stop", description="a NaN or infinite loss: stop (resume with --lr-scale), or restart "
        "from the last good checkpoint with lower learning rates")
    restart_lr_factor: float = Field(0.5, gt=0.0, lt=1.0, description="with restart: learning "
                                     "rates x this at each restart")
    max_restarts: int = Field(3, ge=1, description="with restart: at most this many")
    latency: bool = Field(True, description="measure the trained model's forward latency at "
                          "the end of the run (summary.json latency_ms; a few seconds on CPU)")


class SchemeConfig(_Named):
    """``scheme:`` a registered scheme (``kdforge list schemes``) and its options: how the
    networks of a run teach each other (mutual learning, exits, born-again generations,
    assistant chains...)."""

    name: str


class RunConfig(_Strict):
    """A whole run: what to train, on what, from which teacher, with which losses."""

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig
    student: ModelConfig
    teacher: OneTeacher | list[TeacherConfig] | None = None
    ensemble: Literal["mean_probs", "mean_logits"] = "mean_probs"
    ensemble_weights: list[float] | None = None
    view: ViewConfig | None = Field(None, description="augmentation and teaching setting")
    losses: list[LossConfig] = Field(default_factory=lambda: [LossConfig(name="ce")])
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scheme: SchemeConfig | None = Field(None, description="a scheme: kdforge list schemes")
    eval_teacher: TeacherConfig | None = Field(
        None, description="a teacher that evaluation measures agreement and KL against, "
        "without teaching (a student trained alone gets the fidelity to its study's teacher); "
        "default: the run's own teacher")

    @property
    def teachers(self) -> list[TeacherConfig | StoreTeacherConfig]:
        if self.teacher is None:
            return []
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class StoreOptions(_Strict):
    """``store:`` how ``kdforge soft-labels`` labels and stores views."""

    views_per_sample: int = Field(500, gt=0, description="random views per training sample")
    top_k: int = Field(5, gt=0, description="classes kept per view")
    value_format: Literal["uint8", "fp16"] = "uint8"
    samples_per_shard: int = Field(4096, gt=0)
    batch_size: int = Field(1024, gt=0, description="views per teacher forward pass")
    views_from: str | None = Field(None, description="label the views of this existing store "
                                   "(same samples and geometry: ensemble labels)")


#: Views a soft-label store can hold: those where the teacher sees exactly the student's
#: input (``fixed`` stores the one un-augmented view per sample).
STORE_VIEWS = ("consistent", "fixed", "function_matching")


class SoftLabelConfig(_Strict):
    """``kdforge soft-labels CONFIG``: run the teacher once over many views, store the labels.

    ``view`` takes the options of a training run's view section: ``consistent`` (random
    crops and flips), ``fixed`` (one un-augmented view) or ``function_matching`` (crops
    mixed with a partner sample's view by ``mode: mixup`` or ``cutmix`` with ``alpha``; the
    teacher labels the mixed input).
    """

    name: str = "store"
    seed: int = 0
    output_dir: str = "stores"
    data: DataConfig
    teacher: TeacherConfig | list[TeacherConfig]
    ensemble: Literal["mean_probs", "mean_logits"] = "mean_probs"
    ensemble_weights: list[float] | None = None
    view: ViewConfig = Field(default_factory=lambda: ViewConfig(name="consistent"))
    store: StoreOptions = Field(default_factory=StoreOptions)
    device: str = "auto"

    @field_validator("view")
    @classmethod
    def _storable_view(cls, view: ViewConfig) -> ViewConfig:
        if view.name not in STORE_VIEWS:
            raise ValueError(
                f"a store holds views the teacher and the student see alike; {view.name!r} "
                f"cannot be stored: use one of {', '.join(STORE_VIEWS)}"
            )
        return view

    @property
    def teachers(self) -> list[TeacherConfig]:
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


# -- loading, overrides and readable errors ---------------------------------------------------

def parse_config(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (),
                 kind: type[BaseModel] | None = None) -> Any:
    """Validate a config dict (a :class:`RunConfig` unless ``kind`` says otherwise) after
    applying ``key=value`` overrides."""
    data = deep_copy(data)
    for item in overrides:
        apply_override(data, item)
    if overrides:  # a value is parsed as YAML: it may be !!binary, a timestamp, a cycle
        check_plain(data, "the config after --set " + " ".join(overrides))
    try:
        return (kind or RunConfig).model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, kind or RunConfig)) from None


def parse_section(kind: type[BaseModel], data: dict[str, Any], what: str) -> Any:
    """Validate one section (a scheme's per-group ``optim``) with readable errors."""
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, kind).replace(
            "invalid config", f"invalid {what} settings")) from None


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (),
                kind: type[BaseModel] | None = None, *, relative_to_file: bool = True) -> Any:
    """Read a YAML config file and validate it (with overrides).

    Relative paths written in the file (its teacher, store, data files, ``output_dir``) are
    relative to the file's directory; those given as ``overrides`` to the current directory
    (:mod:`kdforge.config_paths`). A run directory's own ``config.yaml`` holds the paths as
    the run resolved them: read it with ``relative_to_file=False``.
    """
    from kdforge.config_paths import resolve_paths

    path = Path(path)
    data = read_yaml_mapping(path, f"config file {str(path)!r} does not exist",
                             f"{path} must hold a mapping of config sections")
    if relative_to_file:
        resolve_paths(data, (kind or RunConfig).__name__, path.parent)
    try:
        return parse_config(data, overrides, kind)
    except ConfigError as exc:  # name the file: a run directory's config.yaml, or the user's
        raise type(exc)(f"{path}: {exc}") from None


_SECTIONS: dict[str, type[BaseModel]] = {
    "": RunConfig, "data": DataConfig, "student": ModelConfig, "teacher": TeacherConfig,
    "store teacher": StoreTeacherConfig,
    "losses": LossConfig, "view": ViewConfig, "store": StoreOptions, "optim": OptimConfig,
    "schedule": ScheduleConfig, "train": TrainConfig, "scheme": SchemeConfig,
}


def format_validation_error(exc: ValidationError, root: type[BaseModel] = RunConfig) -> str:
    """One line per problem: the dotted key, what is wrong, and what is allowed."""
    lines = []
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]
               if not str(p).startswith(("list[", "function-", "tagged-union["))]
        section = next((p for p in reversed(loc[:-1]) if p in _SECTIONS), "")
        loc = [p for p in loc if p not in ("TeacherConfig", "model teacher", "store teacher")]
        errors.append((".".join(loc) or "(top level)", loc, err, section))
    # A union (teacher: one or a list) reports a failure per branch; keep the informative one.
    branch = ("list_type", "dict_type", "model_type", "model_attributes_type")
    informative = {k for k, _, e, _ in errors if e["type"] not in branch}
    for key, _loc, err, section in errors:
        if err["type"] in branch and any(
                k == key or k.startswith(key + ".") for k in informative):
            continue
        if err["type"] == "extra_forbidden":
            fields = (_SECTIONS[section] if section else root).model_fields
            allowed = ", ".join(f.alias or name for name, f in fields.items())
            section = "teacher" if section == "store teacher" else section
            where = f"section {section!r}" if section else "the top level"
            lines.append(f"{key}: unknown key; allowed keys in {where}: {allowed}")
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(dict.fromkeys(lines))

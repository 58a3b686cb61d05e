"""Teacher integrity (issue 14): after any scheme or stage, every frozen teacher's weights and
BatchNorm statistics are bit-identical to before, and its run's weights file is unchanged.

A :class:`TeacherSpy` watches every frozen network of a run: each model a
:class:`~kdforge.teachers.module.ModuleTeacher` wraps (when it is wrapped, and, for a copy
made without ``__init__``, when it first teaches) and each model
:func:`~kdforge.models.runs.load_run_model` reads (old models, competitors, compression
originals). It keeps a clone of the full ``state_dict`` (parameters and buffers: BatchNorm
``running_mean``, ``running_var``, ``num_batches_tracked``) and the sha256 of the run's
``model.safetensors``; after the run every tensor must be ``torch.equal`` to its clone and
every file unchanged. Every teacher here has BatchNorm layers, so statistics could move.
The first tests show that the check fails when a teacher is run in train mode, a weight
moves by one ulp, or a weights file is rewritten.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdforge import api
from kdforge.config import load_config, parse_config
from kdforge.models import runs
from kdforge.teachers.ensemble import EnsembleTeacher
from kdforge.teachers.module import ModuleTeacher
from tests.conftest import TinyNet, synthetic_config, train_until

WEIGHTS = "model.safetensors"
KD = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "T": 2}]
CNN = {"name": "cnn2d", "channels": [4, 8]}  # BatchNorm2d in both blocks


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@dataclass
class Watched:
    """One frozen network: where it came from, its module and its state when first seen."""

    origin: str
    module: nn.Module
    state: dict[str, torch.Tensor]
    frozen: bool  # wrapped by a ModuleTeacher: its parameters must not require gradients
    run: Path | None = None


@dataclass
class TeacherSpy:
    """Records every frozen teacher network of a run; :meth:`problems` lists what moved."""

    watched: dict[int, Watched] = field(default_factory=dict)
    files: dict[Path, str] = field(default_factory=dict)

    def watch(self, module: nn.Module, origin: str, *, frozen: bool,
              run: Path | None = None) -> None:
        seen = self.watched.get(id(module))  # the spy holds the module: ids are not reused
        if seen is None:
            self.watched[id(module)] = Watched(origin, module, snapshot(module), frozen, run)
        else:  # wrapped again (dfad re-wraps the run's teacher with gradients="input")
            if origin not in seen.origin:
                seen.origin += f" + {origin}"
            seen.frozen |= frozen
            seen.run = seen.run or run

    def watch_file(self, run_dir: str | Path) -> None:
        path = Path(run_dir) / WEIGHTS
        self.files.setdefault(path, sha256(path))

    def loaded(self, run_dir, module: nn.Module) -> None:
        path = Path(run_dir) / WEIGHTS
        saved = load_file(str(path))
        state = module.state_dict()
        assert saved and saved.keys() <= state.keys(), (run_dir, saved.keys() - state.keys())
        assert all(torch.equal(state[k], v) for k, v in saved.items()), \
            f"the model read from {run_dir} differs from its weights file"
        self.watch_file(run_dir)
        self.watch(module, f"load_run_model({run_dir})", frozen=False, run=Path(run_dir))

    def runs(self) -> set[Path]:
        """Run directories whose model was read (as a teacher, old model, original...)."""
        return {w.run.resolve() for w in self.watched.values() if w.run is not None}

    def teachers(self) -> list[Watched]:
        return [w for w in self.watched.values() if w.frozen]

    def problems(self) -> list[str]:
        found = []
        for w in self.watched.values():
            state = w.module.state_dict()
            if state.keys() != w.state.keys():
                found.append(f"{w.origin}: tensors {sorted(state.keys() ^ w.state.keys())} "
                             "appeared or vanished")
            for key in state.keys() & w.state.keys():
                if not torch.equal(state[key], w.state[key]):
                    found.append(f"{w.origin}: {key} changed")
            if w.frozen and any(p.requires_grad for p in w.module.parameters()):
                found.append(f"{w.origin}: a parameter requires gradients again")
        for path, digest in self.files.items():
            if sha256(path) != digest:
                found.append(f"{path} was rewritten")
        return found

    def assert_intact(self, *teacher_runs: str | Path, teachers: int = 1) -> None:
        """Every watched network and file is as it was. The spy saw at least ``teachers``
        ModuleTeacher models, each with BatchNorm statistics that could have moved, and read
        every one of ``teacher_runs``."""
        frozen = self.teachers()
        assert len(frozen) >= teachers, [w.origin for w in self.watched.values()]
        for w in frozen:
            assert any(k.endswith("running_mean") for k in w.state), f"{w.origin}: no BN"
        missed = {Path(r).resolve() for r in teacher_runs} - self.runs()
        assert not missed, f"the spy never saw the teacher runs {missed}"
        problems = self.problems()
        assert not problems, "a frozen teacher changed:\n" + "\n".join(problems)


_ACTIVE: list[TeacherSpy] = []


def _spying_load(original):
    def load_run_model(run_dir):
        model = original(run_dir)
        for spy in _ACTIVE:
            spy.loaded(run_dir, model)
        return model

    return load_run_model


@pytest.fixture
def spy(monkeypatch):
    """A :class:`TeacherSpy` on ModuleTeacher and on ``load_run_model`` wherever a kdforge
    module imported it by name (a module imported later reads the patched attribute)."""
    watcher = TeacherSpy()
    original = runs.load_run_model
    spied = _spying_load(original)
    for name, module in list(sys.modules.items()):
        if name.startswith("kdforge") and getattr(module, "load_run_model", None) is original:
            monkeypatch.setattr(module, "load_run_model", spied)
    init, forward = ModuleTeacher.__init__, ModuleTeacher.forward

    def wrapped_init(self, model, *args, **kwargs):
        init(self, model, *args, **kwargs)
        watcher.watch(self.model, f"ModuleTeacher({type(model).__name__}, "
                                  f"gradients={self.gradients})", frozen=True)

    def first_forward(self, inputs, batch=None):  # a deep copy never ran __init__
        if id(self.model) not in watcher.watched:
            watcher.watch(self.model, f"copied ModuleTeacher({type(self.model).__name__})",
                          frozen=True)
        return forward(self, inputs, batch)

    monkeypatch.setattr(ModuleTeacher, "__init__", wrapped_init)
    monkeypatch.setattr(ModuleTeacher, "forward", first_forward)
    _ACTIVE.append(watcher)
    yield watcher
    _ACTIVE.remove(watcher)


@pytest.fixture(autouse=True)
def _no_latency(monkeypatch):
    """The end-of-run latency of the student (seconds per run) is not what is tested here."""
    monkeypatch.setattr(api, "measure_latency", lambda *a, **k: 0.0)


def _train(root: Path, name: str, seed: int, channels: list[int], cnn: str = "cnn2d",
           **sections) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = synthetic_config(root, name=name, seed=seed, train={"epochs": 1},
                               student={"name": cnn, "channels": channels}, **sections)
        return str(api.train(parse_config(cfg), verbose=False).run_dir)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Two small cnn2d teachers with BatchNorm, one epoch each, of other widths and seeds."""
    root = tmp_path_factory.mktemp("teachers")
    return _train(root, "a", 0, [8, 16]), _train(root, "b", 1, [8, 8])


def run(tmp_path, **sections):
    return api.train(parse_config(synthetic_config(tmp_path, **sections)), verbose=False)


# -- the check can fail --------------------------------------------------------------------------

def test_a_teacher_run_in_train_mode_moves_its_bn_statistics_and_fails_the_check(
        tmp_path, teachers, spy, monkeypatch):
    def leaky(self, inputs):  # a teacher that forgot eval mode
        self.model.train()
        return self.outputs(self.model(inputs))

    monkeypatch.setattr(ModuleTeacher, "_forward", leaky)
    run(tmp_path, name="kd", teacher={"run": teachers[0]}, losses=KD, train={"epochs": 1})
    problems = spy.problems()
    assert problems and all("running_" in p or "num_batches_tracked" in p for p in problems)
    assert any("blocks.0.1.running_mean changed" in p for p in problems)
    with pytest.raises(AssertionError, match="a frozen teacher changed"):
        spy.assert_intact(teachers[0])


def test_one_ulp_in_a_weight_or_a_rewritten_weights_file_fails_the_check(tmp_path, spy):
    net = TinyNet()
    ModuleTeacher(net)
    assert spy.problems() == []
    with torch.no_grad():
        net.fc.weight[0, 0] = torch.nextafter(net.fc.weight[0, 0], torch.tensor(1.0))
    assert spy.problems() == ["ModuleTeacher(TinyNet, gradients=none): fc.weight changed"]
    teacher = Path(_train(tmp_path, "t", 0, [4]))
    ModuleTeacher(runs.load_run_model(teacher))
    (teacher / WEIGHTS).write_bytes((teacher / WEIGHTS).read_bytes())  # same bytes: fine
    assert len(spy.problems()) == 1
    (teacher / WEIGHTS).write_bytes((teacher / WEIGHTS).read_bytes()[:-1] + b" ")
    assert spy.problems()[1:] == [f"{teacher / WEIGHTS} was rewritten"]


# -- teachers: a run, a weights file, bf16, an evaluation teacher, a store, an ensemble ----------

@pytest.mark.parametrize("view", [None, {"name": "independent"}, {"name": "function_matching"}],
                         ids=["plain", "independent", "function_matching"])
def test_kd_from_a_module_teacher(tmp_path, teachers, spy, view):
    """Plain KD, and the teacher on its own augmented views (Beyer et al. 2022)."""
    views = {} if view is None else {"view": view}  # mixed views have no labels: kd alone
    losses = KD if view is None else [{"name": "kd", "T": 2}]
    result = run(tmp_path, name="kd", teacher={"run": teachers[0]}, losses=losses, **views)
    assert result.summary["test"]["agreement"] is not None  # measured against the teacher
    spy.assert_intact(teachers[0])


def test_a_teacher_given_as_a_model_and_a_weights_file(tmp_path, teachers, spy):
    weights = Path(teachers[0]) / WEIGHTS
    spy.watch_file(teachers[0])
    run(tmp_path, name="kd", losses=KD,
        teacher={"name": "cnn2d", "channels": [8, 16], "weights": str(weights)})
    spy.assert_intact()


def test_a_separate_evaluation_teacher_and_a_bf16_teacher(tmp_path, teachers, spy):
    result = run(tmp_path, name="kd", teacher={"run": teachers[0], "precision": "bf16"},
                 eval_teacher={"run": teachers[1]}, losses=KD)
    assert result.summary["test"]["agreement"] is not None  # measured against teachers[1]
    spy.assert_intact(*teachers, teachers=2)


def test_a_soft_label_store_and_the_teacher_that_made_it(tmp_path, teachers, spy):
    from kdforge.config import SoftLabelConfig
    from kdforge.jobs.soft_labels import generate

    data = synthetic_config(tmp_path)["data"]
    store = generate(parse_config(
        {"name": "store", "output_dir": str(tmp_path / "stores"), "data": data,
         "teacher": {"run": teachers[0]}, "device": "cpu",
         "store": {"views_per_sample": 2, "top_k": 3, "samples_per_shard": 48,
                   "batch_size": 64}}, kind=SoftLabelConfig), verbose=False)
    run(tmp_path, name="fkd", teacher={"store": store["path"]},
        losses=[{"name": "soft_ce", "T": 1}])
    spy.assert_intact(teachers[0], teachers=2)  # labelling, then the evaluation teacher


def test_kd_resumed_after_an_interruption(tmp_path, teachers, spy):
    cfg = parse_config(synthetic_config(tmp_path, name="kd", teacher={"run": teachers[0]},
                                        losses=KD, train={"epochs": 2}))
    cut = train_until(cfg, 1)
    api.resume(cut, verbose=False)
    spy.assert_intact(teachers[0], teachers=2)


def test_an_ensemble_of_two_teachers(tmp_path, teachers, spy, monkeypatch):
    built = []
    init = EnsembleTeacher.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(EnsembleTeacher, "__init__", record)
    run(tmp_path, name="ens", teacher=[{"run": t} for t in teachers], losses=KD)
    assert built and len(built[0].members) == 2
    spy.assert_intact(*teachers, teachers=2)


# -- loss terms that read teacher layers ----------------------------------------------------------

def test_feature_losses_that_tap_teacher_layers(tmp_path, teachers, spy):
    losses = [{"name": "ce"},
              {"name": "fitnet", "weight": 10, "student_layer": "blocks.1",
               "teacher_layer": "blocks.1"},
              {"name": "at", "weight": 100, "student_layers": ["blocks.0", "blocks.1"],
               "teacher_layers": ["blocks.0", "blocks.1"]}]
    run(tmp_path, name="feat", teacher={"run": teachers[0]}, student=CNN, losses=losses)
    spy.assert_intact(teachers[0])


SIGNALS = {"input_shape": [1, 40]}
METHODS = sorted((Path(__file__).parents[2] / "configs" / "methods").glob("*.yaml"))


@pytest.fixture(scope="module")
def signal_teacher(tmp_path_factory):
    """A cnn1d teacher (BatchNorm1d) on synthetic (1, 40) signals, of the recipes' teacher
    widths (configs/mnist1d/teacher.yaml)."""
    return _train(tmp_path_factory.mktemp("signals"), "t", 0, [64, 128, 128], cnn="cnn1d",
                  data=SIGNALS)


@pytest.mark.parametrize("recipe", METHODS, ids=[p.stem for p in METHODS])
def test_every_method_recipe_keeps_its_teacher(tmp_path, signal_teacher, spy, recipe):
    """Each shipped method's losses (feature taps, relation terms, CRD's memory, FT's
    pretrained paraphraser, ...) on the recipe's student."""
    cfg = load_config(recipe)
    student = {"name": cfg.student.name, **cfg.student.options}
    run(tmp_path, name=recipe.stem, teacher={"run": signal_teacher}, student=student,
        losses=[loss.model_dump(mode="json", exclude_none=True) for loss in cfg.losses],
        data=SIGNALS)
    spy.assert_intact(signal_teacher)


# -- schemes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("scheme", "losses"), [
    ({"name": "dfad", "z_dim": 8, "width": 8, "steps_per_epoch": 3}, []),
    ({"name": "dafl", "z_dim": 8, "width": 8, "steps_per_epoch": 3}, [{"name": "kd", "T": 1}]),
])
def test_data_free_schemes_whose_gradients_flow_through_the_teacher(tmp_path, teachers, spy,
                                                                    scheme, losses):
    run(tmp_path, name=scheme["name"], teacher={"run": teachers[0]}, scheme=scheme,
        losses=losses, train={"epochs": 1})
    # the generator's loss went through this teacher: it was wrapped with gradients="input"
    assert any("gradients=input" in w.origin for w in spy.teachers())
    spy.assert_intact(teachers[0])


@pytest.mark.parametrize("competition", [False, True])
def test_deepinversion_reads_the_teacher_bn_statistics(tmp_path, teachers, spy, competition):
    scheme = {"name": "deepinversion", "batches": 2, "batch_size": 8, "iterations": 5,
              "lr": 0.1, "competition": competition}
    result = run(tmp_path, name="di", teacher={"run": teachers[0]}, scheme=scheme,
                 losses=[{"name": "kd", "T": 2}], train={"epochs": 1})
    spy.assert_intact(teachers[0])
    if competition:  # the warmed-up student, frozen while inputs are made against it
        assert (result.run_dir / "warm").resolve() in spy.runs()


def test_born_again_generations_teach_each_other(tmp_path, spy):
    result = run(tmp_path, name="ban", student=CNN, losses=[{"name": "kd", "T": 1}],
                 scheme={"name": "ban", "generations": 3}, train={"epochs": 1})
    root = result.run_dir
    assert (root / "gen-3" / WEIGHTS).is_file()
    spy.assert_intact(root / "gen-1", root / "gen-2", teachers=2)  # each taught the next


def test_teacher_assistant_chain(tmp_path, teachers, spy):
    result = run(tmp_path, name="takd", teacher={"run": teachers[0]}, losses=KD,
                 scheme={"name": "takd", "assistants": [{"name": "cnn2d", "channels": [4, 4]}]},
                 train={"epochs": 1})
    spy.assert_intact(teachers[0], result.run_dir / "assistant-1", teachers=2)


@pytest.mark.parametrize(("scheme", "losses"), [
    ({"name": "aekd", "C": 0.6}, [{"name": "aekd", "T": 2}]),
    ({"name": "meal", "hidden": 8}, [{"name": "kd", "T": 1}]),
])
def test_multi_teacher_schemes(tmp_path, teachers, spy, scheme, losses):
    run(tmp_path, name=scheme["name"], teacher=[{"run": t} for t in teachers], scheme=scheme,
        losses=losses, train={"epochs": 1})
    spy.assert_intact(*teachers, teachers=2)


def test_learning_without_forgetting_keeps_the_old_model(tmp_path, spy):
    result = run(tmp_path, name="lwf", student=CNN, train={"epochs": 1},
                 scheme={"name": "lwf", "warmup_epochs": 1})
    spy.assert_intact(result.run_dir / "task-a", teachers=0)


def test_cross_modal_teacher_on_the_clean_modality(tmp_path, teachers, spy):
    scheme = {"name": "cross_modal", "labels": True,
              "modality": {"name": "downsample", "factor": 2}}
    run(tmp_path, name="xm", teacher={"run": teachers[0]}, scheme=scheme, losses=KD,
        train={"epochs": 1})
    spy.assert_intact(teachers[0])


def test_specialists_and_their_generalist(tmp_path, teachers, spy):
    scheme = {"name": "specialists", "num_specialists": 2, "specialist_epochs": 1,
              "steps": 10}
    run(tmp_path, name="sp", teacher={"run": teachers[0]}, scheme=scheme,
        losses=[{"name": "kd", "T": 2}], train={"epochs": 1})
    spy.assert_intact(teachers[0], teachers=3)


def test_transfer_sets_label_mixed_inputs(tmp_path, teachers, spy):
    run(tmp_path, name="ts", teacher={"run": teachers[0]}, losses=[{"name": "kd", "T": 4}],
        train={"epochs": 1},
        scheme={"name": "transfer_set", "sets": ["original", "mixup"]})
    spy.assert_intact(teachers[0], teachers=2)


# -- compression ---------------------------------------------------------------------------------

def test_a_pruning_stage_fine_tuned_by_kd_from_the_original(tmp_path, teachers, spy):
    """(The int8 stage's QAT fine-tune takes minutes on a CPU: not here.)"""
    from kdforge.compress.config import CompressConfig
    from kdforge.compress.pipeline import compress

    cfg = parse_config({
        "name": "pipe", "output_dir": str(tmp_path / "out"), "run": teachers[0],
        "stages": [{"name": "prune", "method": "unstructured", "amount": 0.5}],
        "finetune": {"epochs": 1, "device": "cpu", "batch_size": 32,
                     "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}},
        "chains": {"none": [], "kd": [{"name": "kd", "T": 4}]},
        "latency": {"batches": [1], "warmup": 0, "repeats": 1, "rounds": 1}},
        kind=CompressConfig)
    compress(cfg, verbose=False)
    spy.assert_intact(teachers[0])

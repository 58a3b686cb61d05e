"""``kdforge compress``: chains of stages, each fine-tuned its own way, resumable, reported.

A test stage (``shrink-test``) scales every weight of the model down, so its accuracy drops
and a fine-tune can win it back, without depending on a compression library."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdforge import api
from kdforge.compress import pipeline
from kdforge.compress.config import CompressConfig
from kdforge.compress.measure import time_interleaved
from kdforge.compress.stages import STAGES, Artefact, Stage, StageOptions
from kdforge.config import parse_config
from kdforge.core.errors import CompressionError, ConfigError
from kdforge.engine.callbacks import Callback
from kdforge.engine.checkpoint import save_weights
from kdforge.models.runs import WEIGHTS, load_run_model, save_run_model
from tests.conftest import synthetic_config


class ShrinkOptions(StageOptions):
    factor: float = 0.2
    fail: bool = False


class Shrink(Stage):
    """Multiplies the first layer's weights by ``factor``; ``fail`` raises as a stage that
    cannot apply would."""

    name = "shrink-test"
    Options = ShrinkOptions

    def apply(self, model, ctx, *, finetune):
        if self.options.fail:
            raise CompressionError("layer 'net.0' cannot be shrunk: a test failure")
        with torch.no_grad():
            first = next(m for m in model.modules() if isinstance(m, nn.Linear))
            first.weight.mul_(self.options.factor)
        self.report = {"factor": self.options.factor}
        return model

    def finish(self, model, ctx, out, *, previous):
        out.mkdir(parents=True, exist_ok=True)
        save_weights(model, out / WEIGHTS)
        d = ctx.description
        save_run_model(out, model, name=d["name"], options=d["options"],
                       num_classes=d["num_classes"], input_shape=tuple(d["input_shape"]))
        return self.load(out, ctx, previous=previous)

    def load(self, out, ctx, *, previous):
        model = load_run_model(out).eval()
        return Artefact(model, model, [out / WEIGHTS])


if "shrink-test" not in STAGES:
    STAGES.add("shrink-test", Shrink, source="a test stage")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("orig")
    cfg = synthetic_config(root, name="orig", student={"name": "mlp", "hidden": [32]},
                           train={"epochs": 6}, optim={"name": "adamw", "lr": 0.01},
                           data={"noise": 6.0, "num_train": 256})
    return api.train(parse_config(cfg), verbose=False).run_dir


def compress_config(tmp_path, run, **changes):
    data = {"name": "pipe", "output_dir": str(tmp_path / "out"), "run": str(run),
            "stages": [{"name": "shrink-test", "factor": 0.05},
                       {"name": "shrink-test-2", "finetune": False}],
            "finetune": {"epochs": 2, "device": "cpu",
                         "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}},
            "latency": {"batches": [1, 4], "warmup": 1, "repeats": 3, "rounds": 2}}
    data.update(changes)
    return parse_config(data, kind=CompressConfig)


@pytest.fixture(autouse=True)
def second_stage():
    """A second registered stage name for the two-stage pipelines of this file."""
    if "shrink-test-2" not in STAGES:
        STAGES.add("shrink-test-2", type("Shrink2", (Shrink,), {"name": "shrink-test-2"}),
                   source="a test stage")


def test_every_chain_runs_every_stage_and_the_report_has_one_record_per_stage(tmp_path, trained):
    cfg = compress_config(tmp_path, trained)
    out = pipeline.compress(cfg, verbose=False)
    root = tmp_path / "out" / "pipe"
    assert [r["stage"] for r in out["runs"]] == ["original", "shrink-test", "shrink-test-2"]
    for name in ("compress.json", "compress.md", "compress.png", "config.yaml"):
        assert (root / name).is_file(), name
    assert json.loads((root / "compress.json").read_text()) == json.loads(json.dumps(out))
    original, first, second = out["runs"]
    for r in out["runs"]:
        for key in ("pair", "params", "file_bytes", "latency_ms_b1", "latency_ms_b4",
                    "none_accuracy", "ce_accuracy", "kd_accuracy", "agreement"):
            assert r[key] is not None, (r["stage"], key)
    assert original["agreement"] == 100.0
    assert original["none_accuracy"] == original["kd_accuracy"] == original["ce_accuracy"]
    # chain none never fine-tunes: its first stage is the shrunk model as it is
    facts = json.loads((root / "none" / "shrink-test" / "stage.json").read_text())
    assert facts["finetuned"] is False and facts["factor"] == 0.05
    assert not (root / "none" / "shrink-test" / "checkpoint.safetensors").exists()
    assert (root / "kd" / "shrink-test" / "checkpoint.safetensors").is_file()
    # the second stage is not fine-tuned in any chain (finetune: false)
    for chain in ("none", "ce", "kd"):
        assert not json.loads((root / chain / "shrink-test-2" / "stage.json").read_text())[
            "finetuned"]
    # fine-tuning wins accuracy back; the chains differ
    assert first["kd_accuracy"] > first["none_accuracy"]
    assert first["ce_accuracy"] > first["none_accuracy"]
    # each chain's next stage starts from that chain's model: none shrinks twice
    twice = load_run_model(root / "none" / "shrink-test-2")
    base = load_run_model(trained)
    w = next(m for m in twice.modules() if isinstance(m, nn.Linear)).weight
    w0 = next(m for m in base.modules() if isinstance(m, nn.Linear)).weight
    assert torch.allclose(w, 0.05 * 0.2 * w0)
    assert "| pipe | shrink-test |" in (root / "compress.md").read_text()


def test_a_failing_stage_keeps_the_finished_ones_and_resume_continues(tmp_path, trained,
                                                                      monkeypatch):
    good = compress_config(tmp_path, trained)
    bad = compress_config(tmp_path, trained, stages=[
        {"name": "shrink-test", "factor": 0.2},
        {"name": "shrink-test-2", "finetune": False, "fail": True}])
    with pytest.raises(CompressionError, match="net.0"):
        pipeline.compress(bad, verbose=False)
    root = tmp_path / "out" / "pipe"
    first = root / "none" / "shrink-test"
    assert (first / "stage.json").is_file() and (first / WEIGHTS).is_file()
    # the same pipeline without --resume is refused, a changed one too
    with pytest.raises(ConfigError, match="--resume"):
        pipeline.compress(bad, verbose=False)
    with pytest.raises(ConfigError, match="another config"):
        pipeline.compress(good, resume=True, verbose=False)
    # resume the failed config after "fixing" the stage: finished stages are read back
    trained_before = {p: p.stat().st_mtime_ns for p in root.rglob("stage.json")}
    monkeypatch.setattr(Shrink, "apply", _fixed_apply(Shrink.apply))
    pipeline.compress(bad, resume=True, verbose=False)
    for path, stamp in trained_before.items():
        assert path.stat().st_mtime_ns == stamp, path  # not redone


def _fixed_apply(apply):
    def fixed(self, model, ctx, *, finetune):
        self.options = self.options.model_copy(update={"fail": False})
        return apply(self, model, ctx, finetune=finetune)
    return fixed


def test_an_interrupted_fine_tune_resumes_from_its_checkpoint(tmp_path, trained, monkeypatch):
    cfg = compress_config(tmp_path, trained, chains={"none": [], "kd": [{"name": "kd"}]},
                          stages=[{"name": "shrink-test"}])
    full = pipeline.compress(cfg.model_copy(update={"name": "full"}), verbose=False)

    from kdforge.engine.trainer import Trainer

    real = Trainer.fit

    class Stop(Exception):
        pass

    def stop_after_one(self, resume=False):
        if not resume:
            self.callbacks.append(_Stopper(Stop))
        return real(self, resume=resume)

    monkeypatch.setattr(Trainer, "fit", stop_after_one)
    with pytest.raises(Stop):
        pipeline.compress(cfg, verbose=False)
    monkeypatch.setattr(Trainer, "fit", real)
    resumed = pipeline.compress(cfg, resume=True, verbose=False)
    assert resumed["runs"][1]["kd_accuracy"] == full["runs"][1]["kd_accuracy"]
    a = load_run_model(tmp_path / "out" / "full" / "kd" / "shrink-test").state_dict()
    b = load_run_model(tmp_path / "out" / "pipe" / "kd" / "shrink-test").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Stopper(Callback):
    """Stops a fine-tune after its first epoch (its checkpoint written), as a crash would."""

    def __init__(self, exc):
        self.exc = exc

    def on_epoch(self, trainer, record):
        raise self.exc


@pytest.mark.parametrize("change, message", [
    ({"chains": {"ce": [{"name": "ce"}]}}, "none: \\[\\]"),
    ({"stages": [{"name": "shrink-test"}, {"name": "shrink-test"}]}, "repeat"),
    ({"stages": []}, "stages"),
])
def test_bad_configs_are_refused_with_the_fix(tmp_path, trained, change, message):
    with pytest.raises(ConfigError, match=message):
        compress_config(tmp_path, trained, **change)


def test_unknown_stage_names_the_registered_ones(tmp_path, trained):
    cfg = compress_config(tmp_path, trained, stages=[{"name": "prun"}])
    with pytest.raises(ConfigError, match="prune"):
        pipeline.compress(cfg, verbose=False)
    assert not (tmp_path / "out" / "pipe").exists()


def test_interleaved_timing_measures_every_model_at_every_batch():
    calls = {"a": [], "b": []}

    def model(label, cost):
        def run(x):
            calls[label].append(x.shape[0])
            torch.ones(cost).sum()
        return run

    times = time_interleaved({"a": model("a", 10), "b": model("b", 10)}, torch.zeros(1, 3),
                             batches=[1, 8], warmup=1, repeats=2, rounds=3)
    assert set(times) == {"a", "b"} and set(times["a"]) == {1, 8}
    assert calls["a"].count(8) == 3 * (1 + 2) and calls["b"].count(1) == 3 * 3
    assert all(v > 0 for per in times.values() for v in per.values())


def test_the_original_record_measures_the_run_files(tmp_path, trained):
    cfg = compress_config(tmp_path, trained, stages=[{"name": "shrink-test"}],
                          chains={"none": []})
    original = pipeline.compress(cfg, verbose=False)["runs"][0]
    assert original["file_bytes"] == sum((Path(trained) / f).stat().st_size
                                         for f in ("model.safetensors", "model.json"))
    assert original["params"] == sum(p.numel() for p in load_run_model(trained).parameters())

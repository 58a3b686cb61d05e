"""Learning without forgetting (lwf): the loss, the recorded responses, the stages, resume."""

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kdforge import api, stages
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.data.loaders import first_batch
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.runtime import seed_everything
from kdforge.models import create_model
from kdforge.models.runs import load_run_model
from kdforge.schemes import lwf
from tests.conftest import synthetic_config
from tests.schemes.spies import StageSpy

HEAD = ("fc.weight", "fc.bias")  # mlp with one hidden layer: its classifier


def lwf_config(tmp_path, name="seq", **scheme):
    return parse_config(synthetic_config(tmp_path, name=name,
                                         scheme={"name": "lwf", **scheme}))


class Spy(StageSpy):
    """The stage spy (the ``lwf`` sequence's own calls pass through), counting too how
    often the old responses Y_o are recorded."""

    def __init__(self, monkeypatch, interrupt=None):
        super().__init__(monkeypatch, interrupt, sequence="lwf")
        self.recordings, record = 0, lwf.LwfStep.record

        def counted(step, batches):
            self.recordings += 1
            return record(step, batches)

        monkeypatch.setattr(lwf.LwfStep, "record", counted)


def test_loss_is_the_papers_distillation_cross_entropy_plus_new_task_ce():
    # K_A = 2 old classes, K_B = 3 new ones; two samples with labels 3 and 2 (new classes
    # 1 and 0 after the offset).
    logits = torch.tensor([[1.0, -1.0, 0.5, 2.0, -0.5], [0.0, 3.0, 1.0, 0.0, 0.0]])
    recorded = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    targets = torch.tensor([3, 2])
    T = 2.0
    loss_old, loss_new = lwf.lwf_losses(logits, recorded, targets, 2, T=T)

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    def soften(p):  # the paper: y'_i = y_i^(1/T) / sum_j y_j^(1/T) of probabilities
        r = [v ** (1 / T) for v in p]
        return [v / sum(r) for v in r]

    old = 0.0
    for z, rec in zip(logits.tolist(), recorded.tolist(), strict=True):
        target, now = soften(softmax(rec)), soften(softmax(z[:2]))
        old -= sum(t * math.log(n) for t, n in zip(target, now, strict=True))
    new = -(math.log(softmax([0.5, 2.0, -0.5])[1]) + math.log(softmax([1.0, 0.0, 0.0])[0]))
    assert loss_old.item() == pytest.approx(old / 2, rel=1e-6)
    assert loss_new.item() == pytest.approx(new / 2, rel=1e-6)
    assert lwf.lwf_losses(logits, None, targets, 2, T=T)[0] is None  # fine-tuning: L_new only


def test_the_stages_lwf_records_the_old_model_once_and_finetuning_fixes_the_old_head(
        tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    result = api.train(lwf_config(tmp_path, warmup_epochs=1, lambda_old=0.5), verbose=False)
    root = result.run_dir
    assert [c[0] for c in spy.calls] == ["task-a", "warmup", "lwf", "finetune"]
    assert spy.recordings == 1  # Y_o is recorded by the lwf stage alone, once
    task_a = api.load_config(root / "task-a" / "config.yaml")
    assert task_a.data.classes == [0, 1] and task_a.scheme is None
    for stage, start in (("warmup", "task-a"), ("lwf", "warmup"), ("finetune", "warmup")):
        cfg = api.load_config(root / stage / "config.yaml")
        assert cfg.data.classes == [2, 3] and cfg.student.init == str(root / start)
        assert cfg.scheme.options == {"mode": stage, "old_run": str(root / "task-a"),
                                      "old_classes": [0, 1], "lambda_old": 0.5, "T": 2.0}

    # The recorded responses are the task-A model's outputs on the lwf stage's training
    # samples, by index, and are still that after training (the final checkpoint).
    old = load_run_model(root / "task-a").eval()
    train = api.build_data(api.load_config(root / "lwf" / "config.yaml")).train
    with torch.no_grad():
        expected = old(first_batch(train, len(train)).inputs)
    recorded = load_checkpoint(root / "lwf" / "checkpoint.safetensors")["modules"]["recorded"]
    assert torch.allclose(recorded["logits"], expected, atol=1e-6)

    a = load_file(root / "task-a" / "model.safetensors")
    warm = load_file(root / "warmup" / "model.safetensors")
    ft = load_file(root / "finetune" / "model.safetensors")
    lw = load_file(root / "lwf" / "model.safetensors")
    for key, value in a.items():  # the warm-up trains the new head's rows alone
        assert torch.equal(warm[key][:2] if key in HEAD else warm[key], value), key
    seed_everything(0)  # the new rows as the stage built them, before the warm-up
    fresh = create_model("mlp", 4, (1, 8, 8), hidden=[16]).state_dict()
    assert not torch.equal(warm[HEAD[0]][2:], fresh[HEAD[0]][2:])
    for key in HEAD:  # fine-tuning keeps θ_o fixed, LwF trains it
        assert torch.equal(ft[key][:2], a[key]), key
        assert not torch.equal(lw[key][:2], a[key]), key
    assert not torch.equal(ft["blocks.0.0.weight"], a["blocks.0.0.weight"])  # θ_s is fine-tuned

    records = result.summary["records"]
    assert [r["variant"] for r in records] == ["lwf", "finetune"]
    summaries = {s: api.load_run_summary(root / s) for s in ("task-a", "lwf", "finetune")}
    before = 100 * summaries["task-a"]["test"]["accuracy"]
    for record, stage in zip(records, ("lwf", "finetune"), strict=True):
        numbers = summaries[stage]["scheme"]
        assert record["old_task_accuracy"] == numbers["old_task_accuracy"]
        assert record["new_task_accuracy"] == numbers["new_task_accuracy"]
        assert record["test_accuracy"] == pytest.approx(
            (numbers["old_task_accuracy"] + numbers["new_task_accuracy"]) / 2)
        assert record["old_task_accuracy_before"] == before
        assert record["old_task_accuracy_finetune"] == summaries["finetune"]["scheme"][
            "old_task_accuracy"]
        assert 0 <= record["agreement"] <= 100 and record["student"] == "mlp"
        assert record["run_dir"] == str(root / stage)
    assert stages.load_scheme_result(root)["records"] == records


def test_task_aware_accuracy_scores_each_head_on_its_own_task(tmp_path):
    result = api.train(lwf_config(tmp_path, finetune=False), verbose=False)
    root = result.run_dir
    cfg = api.load_config(root / "lwf" / "config.yaml")
    model = load_run_model(root / "lwf").eval()
    old = load_run_model(root / "task-a").eval()
    hits, agree, n = {}, 0, {}
    for task, classes, cols in (("old", [0, 1], slice(0, 2)), ("new", [2, 3], slice(2, 4))):
        test = lwf.task_test_set(cfg, classes)
        batch = first_batch(test, len(test))
        with torch.no_grad():
            pred = model(batch.inputs)[:, cols].argmax(-1)
            if task == "old":
                agree = (pred == old(batch.inputs).argmax(-1)).float().mean().item()
        hits[task] = (pred == batch.targets).float().mean().item()
        n[task] = len(test)
    record = result.summary["records"][0]
    assert record["old_task_accuracy"] == pytest.approx(100 * hits["old"])
    assert record["new_task_accuracy"] == pytest.approx(100 * hits["new"])
    assert record["agreement"] == pytest.approx(100 * agree)
    assert record["old_task_accuracy_finetune"] is None


def test_an_interrupted_lwf_stage_resumes_without_retraining_task_a(tmp_path, monkeypatch):
    full = api.train(lwf_config(tmp_path, name="full", finetune=False), verbose=False)
    spy = Spy(monkeypatch, interrupt="lwf")
    cfg = lwf_config(tmp_path, finetune=False)
    with pytest.raises(Spy.Stop):
        api.train(cfg, verbose=False)
    assert spy.calls == [("task-a", False), ("lwf", False)] and spy.recordings == 1
    result = api.train(cfg, verbose=False)  # the same command again
    assert spy.calls[2:] == [("lwf", True)]  # task-a read back, lwf resumed
    assert spy.recordings == 1  # the resumed stage reads Y_o from its checkpoint
    for stage in ("task-a", "lwf"):
        a = load_file(full.run_dir / stage / "model.safetensors")
        b = load_file(result.run_dir / stage / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    a = load_checkpoint(full.run_dir / "lwf" / "checkpoint.safetensors")["modules"]
    b = load_checkpoint(result.run_dir / "lwf" / "checkpoint.safetensors")["modules"]
    assert torch.equal(a["recorded"]["logits"], b["recorded"]["logits"])

    def numbers(records):
        return [{k: v for k, v in r.items() if k not in ("run_dir", "train_seconds")}
                for r in records]

    assert numbers(result.summary["records"]) == numbers(full.summary["records"])


@pytest.mark.parametrize(("scheme", "message"), [
    ({"task_a": [0, 1], "task_b": [1, 2]}, "share classes \\[1\\]"),
    ({"task_a": [0, 7], "task_b": [2, 3]}, "outside the data set's classes 0..3"),
    ({"task_a": [], "task_b": [2, 3]}, "task_a is empty"),
    ({"task_a": [0, 0], "task_b": [2, 3]}, "repeats a class"),
])
def test_bad_tasks_are_refused_before_training(tmp_path, monkeypatch, scheme, message):
    spy = Spy(monkeypatch)
    with pytest.raises(ConfigError, match=message):
        api.train(lwf_config(tmp_path, **scheme), verbose=False)
    assert spy.calls == []


def test_bad_settings_are_refused_before_training(tmp_path, monkeypatch):
    for scheme, message in (({"lambda_old": -1}, "lambda_old: Input should be greater than or "
                                                 "equal to 0"),
                            ({"T": 0}, "T: Input should be greater than 0")):
        with pytest.raises(ConfigError, match=message):
            api.train(lwf_config(tmp_path, **scheme), verbose=False)
    teacher = api.train(parse_config(synthetic_config(tmp_path, name="t", train={"epochs": 1})),
                        verbose=False).run_dir
    spy = Spy(monkeypatch)
    for sections, message in (({"teacher": {"run": str(teacher)}}, "remove the 'teacher'"),
                              ({"data": {"classes": [0, 1]}}, "remove data.classes"),
                              ({"view": {"name": "fixed"}}, "remove the 'view'"),
                              ({"losses": [{"name": "kd"}]}, "leave 'losses'")):
        cfg = synthetic_config(tmp_path, scheme={"name": "lwf"}, **sections)
        with pytest.raises(ConfigError, match=message):
            api.train(parse_config(cfg), verbose=False)
    assert spy.calls == []


def test_a_stage_is_refused_without_its_start_or_with_a_mismatched_old_run(tmp_path):
    old = api.train(parse_config(synthetic_config(tmp_path, name="old", train={"epochs": 1},
                                                  data={"classes": [0, 1]})),
                    verbose=False).run_dir
    stage = {"name": "lwf-stage", "old_run": str(old), "old_classes": [0, 1]}
    base = {"data": {"classes": [2, 3]}, "student": {"name": "mlp", "hidden": [16],
                                                     "init": str(old)}}
    for changes, message in (
            ({"student": {"name": "mlp", "hidden": [16]}}, "set student.init"),
            ({"scheme": {**stage, "old_classes": [0, 1, 2]}}, "share classes \\[2\\]"),
            ({"scheme": {**stage, "old_classes": [0]}}, "predicts 2 classes"),
            ({"teacher": {"run": str(old)}}, "remove the 'teacher'")):
        cfg = synthetic_config(tmp_path, name="b", **{**base, "scheme": stage, **changes})
        with pytest.raises(ConfigError, match=message):
            api.train(parse_config(cfg), verbose=False)
    stage_run = api.train(parse_config(synthetic_config(tmp_path, name="b", scheme=stage, **base)),
                          verbose=False)  # a stage runs on its own too
    assert stage_run.summary["records"][0]["variant"] == "lwf"
    with pytest.raises(ConfigError, match="found no classifier"):  # another architecture
        lwf.grown_rows(nn.Linear(4, 5), {"weight": torch.zeros(2, 3)}, 2, 5)

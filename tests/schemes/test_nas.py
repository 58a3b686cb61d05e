"""``nas`` (search to distill, AKD 2020): the candidate grid, costs and budgets, the choice by
validation score, the stages and their records, resuming."""

import json

import pytest
import torch

from kdforge import api, stages
from kdforge.config import parse_config
from kdforge.core.errors import ConfigError
from kdforge.schemes import StageResult, build_scheme, search_space
from kdforge.schemes.base import TrainingInputsForbidden
from tests.conftest import synthetic_config
from tests.schemes.spies import StageSpy

KD = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "T": 4}]
#: mlp on synthetic (1, 8, 8) inputs, 4 classes: depth d of width w has
#: 64w + w + (d - 1)(w^2 + w) + 4w + 4 parameters.
PARAMS = {(1, 4): 280, (1, 64): 4420, (2, 4): 300, (2, 64): 8580, (3, 4): 320, (3, 64): 12740}


def fake_latencies(models, input_shape, **kw):
    """Deterministic 'latency': 1 ms per linear layer (depth + 1 for an mlp)."""
    return [float(sum(isinstance(m, torch.nn.Linear) for m in model.modules()))
            for model in models]


@pytest.fixture
def latency(monkeypatch):
    monkeypatch.setattr(search_space, "latencies", fake_latencies)


@pytest.fixture
def teacher_run(tmp_path):
    cfg = synthetic_config(tmp_path, name="teacher", student={"name": "mlp", "hidden": [32]})
    return api.train(parse_config(cfg), verbose=False).run_dir


def nas_config(tmp_path, teacher="runs/t", name="nas", **scheme):
    options = {"name": "nas", "depths": [1, 2, 3], "widths": [4, 64], "budget_params": 5000,
               "budget_latency_ms": 3.5, "search_epochs": 1, **scheme}
    return parse_config(synthetic_config(tmp_path, name=name, teacher={"run": str(teacher)},
                                         losses=KD, student={"name": "mlp", "hidden": [16]},
                                         scheme=options))


class FakeRunner:
    """Stands in for the stage runner: no training; each stage's validation and test
    accuracy are given by functions of its student's widths; the data's validation and
    test inputs cannot be read (the search reads only classes and shapes)."""

    def __init__(self, root, val, test):
        self.root, self.val, self.test, self.stages = root, val, test, []

    def stage(self, cfg):
        self.stages.append(cfg)
        widths = tuple(cfg.student.options["hidden"])
        summary = {"val": {"accuracy": self.val(widths)},
                   "test": {"accuracy": self.test(widths), "agreement": 0.5},
                   "train_time_s": float(cfg.train.epochs)}
        return StageResult(self.root / cfg.name, summary)

    def data(self, cfg):
        data = api.build_data(cfg)
        return data.with_sets(val=TrainingInputsForbidden(data.val, "nas"),
                              test=TrainingInputsForbidden(data.test, "nas"))


def run_fake(cfg, tmp_path, val, test=lambda widths: 0.5):
    scheme = build_scheme(cfg.scheme)
    runner = FakeRunner(tmp_path / "root", val, test)
    return scheme.run(cfg, runner), runner


# -- the grid and the costs ------------------------------------------------------------------

def test_the_grid_is_depth_by_width_with_the_students_options_and_optional_growth():
    grid = search_space.candidate_grid({"dropout": 0.1}, "hidden", [1, 3], [4, 16])
    assert grid == [{"dropout": 0.1, "hidden": [4]}, {"dropout": 0.1, "hidden": [16]},
                    {"dropout": 0.1, "hidden": [4, 4, 4]},
                    {"dropout": 0.1, "hidden": [16, 16, 16]}]
    grown = search_space.candidate_grid({}, "channels", [1, 4], [4, 16], grow=True)
    assert [g["channels"] for g in grown] == [[4], [16], [4, 8, 16, 16], [16, 16, 16, 16]]


def test_a_sample_of_the_grid_is_seeded_and_keeps_grid_order():
    a = search_space.sample_indices(9, 4, seed=3)
    assert a == search_space.sample_indices(9, 4, seed=3)
    assert a == sorted(a) and len(set(a)) == 4 and set(a) <= set(range(9))
    assert any(search_space.sample_indices(9, 4, seed=s) != a for s in range(4, 8))
    assert search_space.sample_indices(5, None, seed=0) == [0, 1, 2, 3, 4]
    assert search_space.sample_indices(5, 9, seed=0) == [0, 1, 2, 3, 4]


def test_max_candidates_costs_only_the_sampled_candidates(tmp_path, latency):
    cfg = nas_config(tmp_path, max_candidates=3, budget_params=10**6, budget_latency_ms=10.0)
    records, _ = run_fake(cfg, tmp_path, val=lambda w: 0.5)
    grid = search_space.candidate_grid({"hidden": [16]}, "hidden", [1, 2, 3], [4, 64])
    picked = search_space.sample_indices(6, 3, cfg.seed)
    assert [c["options"] for c in records[0]["candidates"]] == [grid[i] for i in picked]


def test_parameters_are_counted_exactly_and_latency_threads_are_restored():
    mlp = search_space.measure_cost("mlp", {"hidden": [8]}, 4, (1, 8, 8), repeats=2)
    assert mlp.params == (64 * 8 + 8) + (8 * 4 + 4)
    cnn = search_space.measure_cost("cnn2d", {"channels": [4]}, 4, (1, 8, 8), repeats=2)
    assert cnn.params == 1 * 4 * 9 + 2 * 4 + (4 * 4 + 4)  # conv (no bias: BN), BN, fc
    assert cnn.latency_ms > 0
    before = torch.get_num_threads()
    search_space.measure_costs("mlp", [{"hidden": [8]}], 4, (1, 8, 8), threads=2, repeats=2)
    assert torch.get_num_threads() == before


def test_interleaved_latency_keeps_the_fastest_round(monkeypatch):
    from kdforge.engine import latency

    ticks = iter([0.0, 5.0, 5.0, 6.0, 6.0, 8.0])  # rounds of 5 s, 1 s and 2 s

    monkeypatch.setattr(latency.time, "perf_counter", lambda: next(ticks))
    times = latency.time_interleaved({"m": lambda x: x}, torch.zeros(1, 2), batches=[1],
                                     warmup=0, repeats=1, rounds=3, reduce="min")
    assert times == {"m": {1: 1000.0}}


def test_candidates_over_either_budget_are_rejected_and_never_trained(tmp_path, latency):
    records, runner = run_fake(nas_config(tmp_path), tmp_path, val=lambda w: 0.5)
    by_options = {(len(c["options"]["hidden"]), c["options"]["hidden"][0]): c
                  for c in records[0]["candidates"]}
    assert {k: c["params"] for k, c in by_options.items()} == PARAMS
    assert by_options[(2, 64)]["status"] == by_options[(3, 64)]["status"] == \
        "over params budget"
    assert by_options[(3, 4)]["status"] == "over latency budget"  # 4 linear layers: 4 ms
    assert by_options[(3, 4)]["latency_ms"] == 4.0
    for key in ((2, 64), (3, 64), (3, 4)):
        assert by_options[key]["score"] is None
    assert [s.name for s in runner.stages] == ["search/cand-00", "search/cand-01",
                                               "search/cand-02", "chosen", "reference"]
    assert [s.train.epochs for s in runner.stages] == [1, 1, 1, 2, 2]


def test_the_choice_follows_the_validation_score_never_the_test_split(tmp_path, latency):
    val = {(4,): 0.9, (64,): 0.5, (4, 4): 0.6}
    test = {(4,): 0.1, (64,): 0.2, (4, 4): 0.99}  # would pick [4, 4]
    records, runner = run_fake(nas_config(tmp_path), tmp_path, val=lambda w: val.get(w, 0.0),
                               test=lambda w: test.get(w, 0.0))
    chosen = records[0]
    assert chosen["student_options"] == {"hidden": [4]}
    assert runner.stages[3].student.options == {"hidden": [4]}
    scores = {tuple(c["options"]["hidden"]): c["score"] for c in chosen["candidates"]}
    assert scores[(4,)] == pytest.approx(90.0) and scores[(4, 4)] == pytest.approx(60.0)
    assert [c["status"] for c in chosen["candidates"] if c["score"] is not None] == [
        "chosen", "trained", "trained"]
    assert chosen["chosen_score"] == pytest.approx(90.0)


def test_a_tie_in_score_goes_to_the_candidate_with_fewer_parameters(tmp_path, latency):
    val = {(64,): 0.7, (4, 4): 0.7, (4,): 0.6}
    records, _ = run_fake(nas_config(tmp_path), tmp_path, val=lambda w: val.get(w, 0.0))
    assert records[0]["student_options"] == {"hidden": [4, 4]}  # 300 < 4420 parameters
    assert records[0]["chosen_params"] == 300


def test_a_search_with_no_feasible_candidate_names_the_smallest_and_leaves_nothing(
        tmp_path, latency):
    cfg = nas_config(tmp_path, budget_params=100)
    with pytest.raises(ConfigError, match=r"smallest.*\[4\].*280 parameters.*2\.000 ms"):
        api.train(cfg, verbose=False)
    assert not (tmp_path / "runs" / "nas").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"teacher": None}, "give a 'teacher' section"),
    ({"losses": [{"name": "ce"}]}, "uses the teacher"),
    ({"scheme": {"depths": []}}, "non-empty grid"),
    ({"scheme": {"widths": []}}, "non-empty grid"),
    ({"data": {"val_fraction": 0.0}}, "data.val_fraction > 0"),
    ({"scheme": {"budget_params": 0}}, "budget_params must be a positive"),
    ({"scheme": {"budget_latency_ms": -1.0}}, "budget_latency_ms must be positive"),
    ({"scheme": {"model": "logreg"}}, "set scheme.key"),
    ({"scheme": {"model": "nosuchmodel", "key": "hidden"}}, "nosuchmodel"),
])
def test_bad_configs_are_refused_before_any_directory_is_written(tmp_path, change, message):
    data = nas_config(tmp_path).to_dict()
    for section, value in change.items():
        if value is None:
            data.pop(section)
        elif isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    with pytest.raises(ConfigError, match=message):
        api.train(parse_config(data), verbose=False)
    assert not (tmp_path / "runs").exists()


# -- real stages -----------------------------------------------------------------------------

def small_search(tmp_path, teacher, **scheme):
    return nas_config(tmp_path, teacher, depths=[1, 2], widths=[4, 64], budget_params=5000,
                      budget_latency_ms=10.0, **scheme)


def test_the_search_trains_stages_and_reports_candidates_chosen_and_reference(
        tmp_path, teacher_run, latency):
    result = api.train(small_search(tmp_path, teacher_run), verbose=False)
    root = result.run_dir
    chosen, reference = result.summary["records"]
    assert chosen["variant"] == "chosen" and reference["variant"] == "reference"
    assert reference["compare"] is False and "compare" not in chosen
    table = chosen["candidates"]
    assert [c["status"] for c in table].count("over params budget") == 1  # [64, 64]
    trained = [c for c in table if c["score"] is not None]
    assert len(trained) == 3 and all(0 <= c["score"] <= 100 for c in trained)
    best = max(trained, key=lambda c: (c["score"], -c["params"]))
    assert best["status"] == "chosen" and chosen["student_options"] == best["options"]
    for i in range(3):
        stage = api.load_config(root / f"search/cand-{i:02d}" / "config.yaml")
        assert stage.train.epochs == 1 and stage.teacher.run == str(teacher_run)
        score = 100 * api.load_run_summary(root / f"search/cand-{i:02d}")["val"]["accuracy"]
        assert table[i]["score"] == pytest.approx(score)
    assert not (root / "search" / "cand-03").exists()
    final = api.load_config(root / "chosen" / "config.yaml")
    assert final.train.epochs == 2 and final.student.options == best["options"]
    assert chosen["chosen_params"] == best["params"] <= chosen["budget_params"] == 5000
    assert chosen["chosen_latency_ms"] == best["latency_ms"] <= chosen["budget_latency_ms"]
    seconds = [api.load_run_summary(root / d)["train_time_s"]
               for d in ("search/cand-00", "search/cand-01", "search/cand-02", "chosen")]
    assert chosen["train_seconds"] == pytest.approx(sum(seconds))
    # the reference: the default zoo student (rank-3 inputs) nearest in parameters
    sizes = [({"name": "mlp", "hidden": [100, 100]}, 64 * 100 + 100 + 100 * 100 + 100 + 404),
             ({"name": "mlp", "hidden": [32]}, 64 * 32 + 32 + 32 * 4 + 4),
             ({"name": "cnn2d"}, search_space.measure_cost("cnn2d", {}, 4, (1, 8, 8),
                                                          repeats=1).params)]
    spec, params = min(sizes, key=lambda s: abs(s[1] - best["params"]))
    assert {"name": chosen["reference_student"], **chosen["reference_options"]} == spec
    assert reference["student"] == spec["name"]
    assert chosen["reference_params"] == reference["params"] == params
    assert chosen["reference_accuracy"] == reference["test_accuracy"]
    ref_cfg = api.load_config(root / "reference" / "config.yaml")
    assert ref_cfg.teacher.run == str(teacher_run) and ref_cfg.train.epochs == 2
    assert [loss.name for loss in ref_cfg.losses] == ["ce", "kd"]
    written = json.loads((root / "search.json").read_text())
    assert [c["options"] for c in written["candidates"]] == [c["options"] for c in table]
    assert [c["status"] for c in written["candidates"]] == [c["status"] for c in table]
    assert written["chosen"] == f"search/cand-{table.index(best):02d}"


def test_an_interrupted_search_resumes_and_reads_its_measured_costs_back(
        tmp_path, teacher_run, latency, monkeypatch):
    spy = StageSpy(monkeypatch, interrupt="search/cand-01")
    cfg = small_search(tmp_path, teacher_run)
    with pytest.raises(StageSpy.Stop):
        stages.run_sequence(cfg, verbose=False)
    assert spy.calls == [("search/cand-00", False), ("search/cand-01", False)]

    def no_measuring(*args, **kw):
        raise AssertionError("the costs of the interrupted search must be read back")

    monkeypatch.setattr(search_space, "latencies", no_measuring)
    result = stages.run_sequence(cfg, verbose=False)  # the same command again
    assert spy.calls[2:] == [("search/cand-01", True), ("search/cand-02", False),
                             ("chosen", False), ("reference", False)]
    assert [r["variant"] for r in result.summary["records"]] == ["chosen", "reference"]
    stages.run_sequence(cfg, verbose=False)
    assert len(spy.calls) == 6  # a finished search trains nothing

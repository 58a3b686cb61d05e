"""The CUDA paths: AMP, channels_last, torch.compile, views and stores on the GPU.

Skipped without a GPU (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

import math

import pytest
import torch

from kdforge import api
from kdforge.config import SoftLabelConfig, parse_config
from kdforge.core.outputs import Batch
from kdforge.data.augment import AugmentParams, ImageAugment, seeded_normal, seeded_uniform
from kdforge.jobs.soft_labels import generate
from kdforge.store import SoftLabelStore, StoreView
from tests.conftest import synthetic_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_config(tmp_path, **extra):
    train = {"device": "cuda", "epochs": 3, **extra.pop("train", {})}
    return synthetic_config(tmp_path, train=train, **extra)


@pytest.fixture
def teacher(tmp_path):
    cfg = cuda_config(tmp_path, name="teacher", student={"name": "cnn2d"})
    return api.train(parse_config(cfg), verbose=False).run_dir


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_with_amp_and_channels_last(tmp_path, precision):
    cfg = cuda_config(tmp_path, name=f"amp-{precision}", student={"name": "resnet8"},
                      train={"precision": precision, "channels_last": True})
    result = api.train(parse_config(cfg), verbose=False)
    history = [r["train/loss"] for r in map(eval_json, result.run_dir.joinpath(
        "metrics.jsonl").read_text().splitlines())]
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < history[0]
    assert result.summary["test"]["accuracy"] > 0.5  # 4 well-separated synthetic classes


def eval_json(line):
    import json

    return json.loads(line)


def test_compiled_student_trains_and_resumes(tmp_path):
    cfg = cuda_config(tmp_path, name="compiled", student={"name": "cnn2d"},
                      train={"compile": True, "precision": "bf16"})
    result = api.train(parse_config(cfg), verbose=False)
    assert math.isfinite(result.summary["val"]["nll"])
    api.evaluate_run(result.run_dir)  # weights saved from a compiled module load back


@pytest.mark.parametrize("view", ["consistent", "function_matching", "independent"])
def test_online_kd_with_views_on_cuda_is_deterministic(tmp_path, teacher, view):
    def run(name):
        cfg = cuda_config(tmp_path, name=name, student={"name": "mlp", "hidden": [16]},
                          teacher={"run": str(teacher)}, view={"name": view},
                          losses=[{"name": "kd", "T": 1}],
                          train={"deterministic": True})
        return api.train(parse_config(cfg), verbose=False)

    a, b = run(f"{view}-a"), run(f"{view}-b")
    assert a.summary["test"]["agreement"] == b.summary["test"]["agreement"]
    assert 0 <= a.summary["test"]["kl"] < 10


def test_store_made_on_cuda_replays_on_cuda_and_trains(tmp_path, teacher):
    base = cuda_config(tmp_path)
    sl = parse_config({"name": "store", "output_dir": str(tmp_path / "stores"),
                       "data": base["data"], "teacher": {"run": str(teacher)}, "device": "cuda",
                       "store": {"views_per_sample": 4, "top_k": 3, "batch_size": 64}},
                      kind=SoftLabelConfig)
    stats = generate(sl, verbose=False)
    store = SoftLabelStore(stats["path"])
    data = api.build_data(parse_config(base))
    items = data.train.__getitems__(list(range(16)))
    batch = Batch(items["input"].cuda(), items["target"].cuda(), index=items["index"].cuda())
    replayed = StoreView(store, (1, 8, 8))(batch, torch.Generator("cuda").manual_seed(0))
    assert replayed.inputs.is_cuda
    net = api.build_teacher(parse_config({**base, "teacher": {"run": str(teacher)}}),
                            4, (1, 8, 8)).cuda()
    logp = torch.log_softmax(net(replayed.inputs).logits, -1)
    values, indices = logp.topk(3, -1)
    records = replayed.view.records
    assert torch.equal(indices.cpu(), records.indices.cpu())
    assert torch.allclose(values.clamp(min=-16).cpu(), records.logp.cpu(),
                          atol=store.layout.step / 2 + 1e-5)
    cfg = cuda_config(tmp_path, name="fkd", student={"name": "mlp", "hidden": [16]},
                      teacher={"store": stats["path"], "repeats": 2},
                      losses=[{"name": "kd", "T": 2}], train={"precision": "bf16"})
    result = api.train(parse_config(cfg), verbose=False)
    assert result.summary["teacher_params"] == 0
    assert math.isfinite(result.summary["val"]["nll"])


def test_seeded_noise_is_the_same_on_cpu_and_cuda():
    seeds = torch.tensor([0, 1, 2**40 + 7, -5], dtype=torch.int64)
    assert torch.equal(seeded_uniform(seeds, 33), seeded_uniform(seeds.cuda(), 33).cpu())
    cpu = seeded_normal(seeds, 33).float()
    gpu = seeded_normal(seeds.cuda(), 33).float().cpu()
    assert torch.allclose(cpu, gpu, rtol=0, atol=1e-6)


def test_crops_on_cpu_and_cuda_agree():
    x = torch.rand(8, 3, 16, 16)
    augment = ImageAugment(scale=(0.3, 1.0))
    params = augment.sample(8, torch.Generator().manual_seed(0))
    cpu = augment.apply(x, params)
    gpu = augment.apply(x.cuda(), AugmentParams(params.crop.cuda(), params.flip.cuda()))
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
@pytest.mark.parametrize("shape", [[1, 8, 8], [1, 40]])
def test_function_matching_store_made_on_cuda_replays_bit_identically(tmp_path, monkeypatch,
                                                                      mode, shape):
    data_cfg = {"input_shape": shape, "num_train": 96}
    t_cfg = cuda_config(tmp_path, name="t", data=data_cfg,
                        student={"name": "cnn2d" if len(shape) == 3 else "cnn1d"})
    t_run = api.train(parse_config(t_cfg), verbose=False).run_dir
    seen = []
    build = api.build_teacher

    def spy(*args, **kwargs):  # every input the teacher labels, in record order
        net = build(*args, **kwargs)
        net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
        return net

    monkeypatch.setattr(api, "build_teacher", spy)
    view = {"name": "function_matching", "mode": mode, "alpha": 0.5}
    if len(shape) == 2:
        view["noise_std"] = 0.3
    sl = parse_config({"name": "fm", "output_dir": str(tmp_path / "stores"),
                       "data": t_cfg["data"], "teacher": {"run": str(t_run)}, "device": "cuda",
                       "view": view, "store": {"views_per_sample": 4, "top_k": 3,
                                               "samples_per_shard": 40, "batch_size": 64}},
                      kind=SoftLabelConfig)
    store = SoftLabelStore(generate(sl, verbose=False)["path"])
    labelled = torch.cat(seen)
    assert labelled.is_cuda and store.layout.has_mix
    data = api.build_data(parse_config(t_cfg))
    items = data.train.__getitems__(list(range(0, 72, 3)))
    batch = Batch(items["input"].cuda(), items["target"].cuda(), index=items["index"].cuda())
    replayed = StoreView(store, tuple(shape), repeats=2, dataset=data.train)(
        batch, torch.Generator("cuda").manual_seed(0))
    assert replayed.inputs.is_cuda
    rows = (replayed.view.sample * 4 + replayed.view.view).to(labelled.device)
    assert torch.equal(replayed.inputs, labelled[rows])
    net = build(parse_config({**t_cfg, "teacher": {"run": str(t_run)}}), 4, tuple(shape)).cuda()
    indices = torch.log_softmax(net(replayed.inputs).logits, -1).topk(3, -1).indices
    assert torch.equal(indices.cpu(), replayed.view.records.indices.cpu())

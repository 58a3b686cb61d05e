"""No file a user can hand kdforge runs code when it is read (issue 14, "no pickle on any load
path").

Each case plants a malicious payload in one place kdforge reads a file -- a pickle whose
unpickling touches a marker file, or a YAML document whose unsafe loading would -- and
calls the loader a command goes through. Each asserts that (a) nothing ran (the marker is
absent) and (b) the loader refused the file with a kdforge error (a ``KDForgeError``
subclass) whose message names the file, or, for a cache, replaced it with a fresh one.
:data:`PLACES` counts the places (quoted in docs/reliability.md).
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kdforge import api
from kdforge.config import load_config, parse_config
from kdforge.core.errors import KDForgeError
from tests.conftest import synthetic_config


class Exploit:
    """Unpickling this writes a marker file: proof that the loader ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload(marker: Path) -> bytes:
    return pickle.dumps({"epoch": 1, "state_dict": Exploit(str(marker))})


def plant(path: Path, marker: Path, size: int | None = None) -> Path:
    """Write the malicious pickle to ``path`` (zero-padded to ``size`` bytes if given)."""
    data = payload(marker)
    if size is not None:
        data = data.ljust(size, b"\0")[:max(size, len(data))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def yaml_payload(marker: Path) -> str:
    """A YAML document whose unsafe loading runs a shell command."""
    return f'name: run\ndata: !!python/object/apply:os.system ["touch {marker}"]\n'


@dataclass
class Place:
    """Where the payload goes: ``tmp`` (a fresh folder), ``run`` (a copy of a finished run
    directory) and ``marker``; a case plants there and returns ``(planted file, load)``."""

    tmp: Path
    run: Path
    marker: Path


def _train(tmp: Path, **sections) -> Path:
    cfg = parse_config(synthetic_config(tmp, train={"epochs": 1, "latency": False}, **sections))
    return api.train(cfg, verbose=False).run_dir


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(tmp_path_factory.mktemp("finished"))
    finally:
        torch.set_num_threads(threads)


# -- the places ---------------------------------------------------------------------------

CASES: dict[str, Callable[[Place], tuple[Path, Callable[[], object]]]] = {}


def case(name: str):
    def wrap(fn):
        CASES[name] = fn
        return fn
    return wrap


@case("run checkpoint (checkpoint.safetensors), --resume")
def _checkpoint(p: Place):
    return plant(p.run / "checkpoint.safetensors", p.marker), lambda: api.resume(
        p.run, verbose=False)


@case("legacy checkpoint (checkpoint.pt of kdforge < 0.2), --resume")
def _legacy_checkpoint(p: Place):
    (p.run / "checkpoint.safetensors").unlink()
    return plant(p.run / "checkpoint.pt", p.marker), lambda: api.resume(p.run, verbose=False)


@case("run config (config.yaml, python tag), --resume")
def _run_config(p: Place):
    path = p.run / "config.yaml"
    path.write_text(yaml_payload(p.marker))
    return path, lambda: api.resume(p.run, verbose=False)


@case("run config (config.yaml, a pickle), --resume")
def _run_config_pickle(p: Place):
    return plant(p.run / "config.yaml", p.marker), lambda: api.resume(p.run, verbose=False)


@case("user config file (YAML, python tag)")
def _user_config(p: Place):
    path = p.tmp / "evil.yaml"
    path.write_text(yaml_payload(p.marker))
    return path, lambda: load_config(path)


@case("run weights (model.safetensors), evaluate")
def _run_weights(p: Place):
    return plant(p.run / "model.safetensors", p.marker), lambda: api.evaluate_run(p.run)


@case("run model description (model.json), evaluate")
def _run_model_json(p: Place):
    return plant(p.run / "model.json", p.marker), lambda: api.evaluate_run(p.run)


@case("run summary (summary.json), stage records read back on resume")
def _run_summary(p: Place):
    return plant(p.run / "summary.json", p.marker), lambda: api.load_run_summary(p.run)


@case("teacher run (teacher: {run: DIR}, its model.safetensors)")
def _teacher_run(p: Place):
    plant(p.run / "model.safetensors", p.marker)
    cfg = parse_config(synthetic_config(p.tmp, name="kd", teacher={"run": str(p.run)},
                                        losses=[{"name": "kd"}]))
    return p.run / "model.safetensors", lambda: api.train(cfg, verbose=False)


def _teacher_weights(suffix: str):
    def make(p: Place):
        path = plant(p.tmp / f"teacher{suffix}", p.marker)
        cfg = parse_config(synthetic_config(
            p.tmp, name="kd", teacher={"name": "mlp", "hidden": [16], "weights": str(path)},
            losses=[{"name": "kd"}]))
        return path, lambda: api.train(cfg, verbose=False)
    return make


for _suffix in (".pt", ".pth", ".safetensors"):
    CASES[f"teacher weights ({_suffix}, torch.load(weights_only=True) / safetensors)"] = \
        _teacher_weights(_suffix)


@case("student init (student.init: RUN_DIR, its model.safetensors)")
def _student_init(p: Place):
    plant(p.run / "model.safetensors", p.marker)
    cfg = parse_config(synthetic_config(p.tmp, name="init",
                                        student={"name": "mlp", "hidden": [16],
                                                 "init": str(p.run)}))
    return p.run / "model.safetensors", lambda: api.train(cfg, verbose=False)


def _store(p: Place) -> Path:
    from tests.store.builders import build_store, layout_of

    root = p.tmp / "store"
    build_store(root, layout_of())
    return root


@case("soft-label store meta (meta.json)")
def _store_meta(p: Place):
    from kdforge.store import SoftLabelStore

    root = _store(p)
    return plant(root / "meta.json", p.marker), lambda: SoftLabelStore(root)


@case("soft-label store shard (a pickle of the shard's size), checksum on open")
def _store_shard(p: Place):
    from kdforge.store import SoftLabelStore

    root = _store(p)
    shard = SoftLabelStore(root).shard_files()[0]
    plant(shard, p.marker, size=shard.stat().st_size)

    def load():
        store = SoftLabelStore(root)
        store.verify()  # what a run does before training (teacher.verify, on by default)
        return store
    return shard, load


@case("CIFAR batch (restricted unpickler)")
def _cifar(p: Place):
    from kdforge.data.datasets import load_dataset

    folder = p.tmp / "cifar-10-batches-py"
    for name in ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]:
        plant(folder / name, p.marker)
    return folder, lambda: load_dataset("cifar10", root=str(folder))


@case("image folder (a pickle named .png)")
def _image_folder(p: Place):
    import numpy as np
    from PIL import Image

    from kdforge.data.datasets import load_dataset

    root = p.tmp / "images"
    for k in ("a", "b"):
        (root / k).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / k / f"{i}.png")
    bad = plant(root / "b" / "1.png", p.marker)

    def load():
        splits = load_dataset("image_folder", root=str(root), test_fraction=0.5)
        return [splits.train[i] for i in range(len(splits.train))] + [
            splits.test[i] for i in range(len(splits.test))]
    return bad, load


@case("int8 model state (pt2e quantized.safetensors)")
def _int8_state(p: Place):
    from kdforge.compress import quantize as Q
    from kdforge.models.simple import cnn2d

    def build():
        return cnn2d(4, (1, 8, 8), channels=(4, 4)).eval()

    out = p.tmp / "int8"
    gen = torch.Generator().manual_seed(0)
    int8 = Q.build_route("pt2e", compile=False).ptq(build(), [torch.randn(8, 1, 8, 8,
                                                                           generator=gen)])
    Q.save_quantized(out, int8)
    path = plant(out / "quantized.safetensors", p.marker)
    return path, lambda: Q.load_quantized(out, build, torch.randn(1, 1, 8, 8))


@case("int8 model meta (quantized.json)")
def _int8_meta(p: Place):
    from kdforge.compress import quantize as Q

    path = plant(p.tmp / "int8" / "quantized.json", p.marker)
    return path, lambda: Q.load_quantized(path.parent, lambda: None, torch.randn(1, 1, 8, 8))


@case("ONNX export (model.onnx) read back by the onnx stage")
def _onnx(p: Place):
    from kdforge.compress.export import OnnxModule

    path = plant(p.tmp / "onnx" / "model.onnx", p.marker)
    return path, lambda: OnnxModule(path)


@case("compression stage record (stage.json) read back on --resume")
def _stage_facts(p: Place):
    from kdforge.compress.stages import STAGE_FILE, read_stage_facts

    path = plant(p.tmp / "kd" / "prune" / STAGE_FILE, p.marker)
    return path, lambda: read_stage_facts(path.parent)


@case("pruned model (a prune stage's model.json) read back on --resume")
def _pruned(p: Place):
    from kdforge.models.runs import load_run_model

    out = p.tmp / "kd" / "prune"
    shutil.copytree(p.run, out)
    return plant(out / "model.json", p.marker), lambda: load_run_model(out)


@case("architecture search record (nas search.json) read back on resume")
def _nas(p: Place):
    from kdforge.schemes import nas

    path = plant(p.tmp / "search" / nas.SEARCH_FILE, p.marker)
    return path, lambda: nas._stored_costs(path, "mlp", [{}], {})


@case("scheme record (scheme.json)")
def _scheme(p: Place):
    from kdforge.stages import SCHEME_FILE, load_scheme_result

    path = plant(p.tmp / "scheme" / SCHEME_FILE, p.marker)
    return path, lambda: load_scheme_result(path.parent)


@case("run metrics (metrics.jsonl) read back on --resume")
def _metrics(p: Place):
    return plant(p.run / "metrics.jsonl", p.marker), lambda: api.resume(p.run, verbose=False)


@case("mnist1d cache (.npz): replaced, never unpickled")
def _mnist1d_cache(p: Place):
    from kdforge.data.datasets import load_dataset
    from kdforge.data.datasets.base import cache_dir

    load_dataset("mnist1d", num_samples=100, draw_seed=3)
    path = next((cache_dir() / "mnist1d").glob("mnist1d_n100_s3_*.npz"))
    plant(path, p.marker)

    def load():
        splits = load_dataset("mnist1d", num_samples=100, draw_seed=3)
        assert len(splits.train) == 80 and path.read_bytes()[:2] == b"PK"  # a fresh zip
        return splits
    return path, load


#: Places a user-handed file is read, each with a planted payload (docs/reliability.md).
PLACES = len(CASES)

#: Places whose loader still lets a raw (non-kdforge) exception out; the fix is outside
#: this helper's files (see the report of issue 14). Nothing runs in any of them.
NOT_YET_WRAPPED: dict[str, str] = {}  # every place refuses it now


def _params():
    for name in CASES:
        marks = ([pytest.mark.xfail(reason=NOT_YET_WRAPPED[name], strict=True)]
                 if name in NOT_YET_WRAPPED else [])
        yield pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("name", list(_params()))
def test_a_planted_payload_never_runs_and_is_refused_naming_the_file(name, finished_run,
                                                                     tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    place = Place(tmp=tmp_path / "work", run=run, marker=tmp_path / "pwned")
    place.tmp.mkdir()
    planted, load = CASES[name](place)
    try:
        if name.startswith("mnist1d cache"):
            load()  # a cache is regenerated, not refused
        else:
            with pytest.raises(KDForgeError) as err:
                load()
            assert str(planted) in str(err.value) or str(planted.parent) in str(err.value), \
                str(err.value)
    finally:
        assert not place.marker.exists(), f"{name}: the planted payload ran"


def test_every_place_is_a_case():
    assert PLACES >= 25 and set(NOT_YET_WRAPPED) <= set(CASES)
    print(f"planted-payload places: {PLACES}")

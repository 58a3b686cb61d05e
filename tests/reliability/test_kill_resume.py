"""Kill at any point, lose nothing: SIGKILL real ``kdforge`` processes, resume, compare.

Each test kills a ``python -m kdforge.cli`` subprocess at named fault points
(``KDFORGE_FAULT``, :mod:`kdforge.core.faults`), resumes it and checks that the finished
tree equals an uninterrupted run's: weights bit for bit, metrics and summaries equal but
for timing fields (:func:`tests.reliability.killing.tree_differences`). More kill points,
and kills at random times, are in ``benchmarks/kill_stress.py``.
"""

from __future__ import annotations

import pytest

from kdforge import api
from kdforge.compress.config import CompressConfig
from kdforge.compress.pipeline import compress
from kdforge.config import SoftLabelConfig, parse_config
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.jobs.soft_labels import generate
from tests.reliability.killing import (
    compress_config,
    kdforge,
    scheme_config,
    store_config,
    temporaries,
    train_config,
    tree_differences,
    write_yaml,
)

KILLED = -9


def _killed(proc) -> None:
    assert proc.returncode == KILLED, (proc.returncode, proc.stderr[-2000:])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained run (the compression pipeline's original, the store's teacher)."""
    out = tmp_path_factory.mktemp("teacher")
    return api.train(parse_config(train_config(out, name="teacher", epochs=2)),
                     verbose=False).run_dir


def test_train_killed_at_startup_mid_checkpoint_and_mid_epoch_resumes_to_the_same_run(
        tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    api.train(parse_config(train_config(ref)), verbose=False)
    config = write_yaml(tmp_path / "run.yaml", train_config(cut))
    run_dir = cut / "run"

    # 1. killed before the first checkpoint: --resume starts the run from scratch
    _killed(kdforge("train", str(config), "--quiet", fault="run-start:1"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    # 2. ... and that resumed process is killed while writing its second checkpoint
    _killed(kdforge("train", "--resume", str(run_dir), "--quiet",
                    fault="write/checkpoint.safetensors:2"))
    assert load_checkpoint(run_dir / "checkpoint.safetensors")["epoch"] == 1  # the old one
    assert temporaries(run_dir) and not (run_dir / "model.safetensors").exists()
    # 3. ... the next one mid-epoch (5th step after epoch 1: in epoch 3, 3 steps an epoch)
    _killed(kdforge("train", "--resume", str(run_dir), "--quiet", fault="step:5"))
    assert load_checkpoint(run_dir / "checkpoint.safetensors")["epoch"] == 2
    # 4. resumed to the end (here, the CLI's own function): the temporary file is gone,
    # nothing differs
    api.resume(run_dir, verbose=False)
    assert not temporaries(run_dir)
    assert tree_differences(ref, cut) == []


def test_a_resume_of_a_run_killed_before_its_config_says_to_start_it_again(tmp_path, capsys):
    from kdforge.cli import main

    (tmp_path / "run").mkdir()
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "kdforge train CONFIG" in err and "Traceback" not in err


def test_sequence_scheme_killed_between_stages_resumes_to_the_same_stages(tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    api.train(parse_config(scheme_config(ref)), verbose=False)
    config = write_yaml(tmp_path / "ban.yaml", scheme_config(cut))
    # generation 1 finished, generation 2 not started
    _killed(kdforge("train", str(config), "--quiet", fault="stage:2"))
    finished = [p.name for p in (cut / "ban").iterdir() if (p / "summary.json").is_file()]
    assert len(finished) == 1, finished
    assert not (cut / "ban" / "scheme.json").exists()
    api.resume(cut / "ban", verbose=False)
    assert tree_differences(ref, cut) == []


def test_compress_killed_between_stages_resumes_to_the_same_pipeline(tmp_path, teacher):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    compress(parse_config(compress_config(ref, teacher), kind=CompressConfig), verbose=False)
    config = write_yaml(tmp_path / "pipe.yaml", compress_config(cut, teacher))
    # hits: none/prune, none/int8, kd/prune, kd/int8: die after kd/prune's fine-tune
    _killed(kdforge("compress", str(config), "--quiet", fault="compress-stage:4"))
    assert (cut / "pipe" / "kd" / "prune" / "stage.json").is_file()
    assert not (cut / "pipe" / "kd" / "int8").exists()
    compress(parse_config(compress_config(cut, teacher), kind=CompressConfig), resume=True,
             verbose=False)
    assert tree_differences(ref, cut) == []


def test_soft_labels_killed_mid_shard_write_resume_to_the_same_store(tmp_path, teacher):
    data = train_config(tmp_path)["data"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    generate(parse_config(store_config(ref, teacher, data), kind=SoftLabelConfig),
             verbose=False)
    config = write_yaml(tmp_path / "store.yaml", store_config(cut, teacher, data))
    # writes: shard 0, its sidecar, shard 1 (killed before its rename)
    _killed(kdforge("soft-labels", str(config), "--quiet", fault="write:3"))
    store = cut / "store"
    assert temporaries(store) and not (store / "meta.json").exists()
    generate(parse_config(store_config(cut, teacher, data), kind=SoftLabelConfig),
             verbose=False)
    assert not temporaries(store)  # the shard's writer removed its own leftover
    assert tree_differences(ref, cut) == []


def test_closing_a_store_again_removes_what_a_killed_close_left(tmp_path):
    import torch

    from kdforge.store import SoftLabelStoreWriter
    from tests.store.builders import META, layout_of, random_views

    layout = layout_of()
    writer = SoftLabelStoreWriter(tmp_path, layout, META, samples_per_shard=5)
    views = random_views(layout, layout.num_records, torch.Generator().manual_seed(0))
    V = layout.views_per_sample
    for shard in range(writer.num_shards):
        lo, hi = writer.shard_samples(shard)
        writer.write_shard(shard, writer.encode(**{k: v[lo * V:hi * V] for k, v in views.items()}))
    (tmp_path / ".meta.json.x1y2z3.tmp").write_text('{"format": ')  # killed mid-close
    writer.close()
    assert not temporaries(tmp_path) and (tmp_path / "meta.json").is_file()

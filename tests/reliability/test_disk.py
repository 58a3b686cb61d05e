"""Disk full or unwritable run directory: refused before training where it can be known,
and a write that fails never leaves a half-written file that looks complete."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections import namedtuple

import pytest
import torch
from safetensors.torch import save_file

from kdforge import api
from kdforge.config import parse_config
from kdforge.core import files
from kdforge.core.errors import KDForgeError, RunDirError
from kdforge.core.files import atomic_write, check_writable
from kdforge.engine import checkpoint
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.engine.logging import read_metrics
from tests.reliability.killing import temporaries, train_config

FIX = "free space or choose another output_dir"


def _cfg(out, **kw):
    return parse_config(train_config(out, epochs=2, **kw))


def test_output_dir_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    with pytest.raises(RunDirError, match="is a file") as info:
        api.train(_cfg(tmp_path / "runs"), verbose=False)
    assert str(tmp_path / "runs") in str(info.value)
    assert isinstance(info.value, KDForgeError)


def test_unwritable_output_dir_is_refused_before_training(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: there, the refusal is simulated
        out.chmod(0o500)
    else:
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(RunDirError, match="make it writable or choose another output_dir"):
            api.train(_cfg(out), verbose=False)
    finally:
        out.chmod(0o700)
    assert not (out / "run").exists()


def test_a_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 4096))
    with pytest.raises(RunDirError, match=FIX) as info:
        api.train(_cfg(tmp_path / "runs"), verbose=False)
    assert "4096 bytes are free" in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_check_writable_accepts_a_new_directory_and_creates_nothing(tmp_path):
    check_writable(tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


def test_enospc_mid_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text('{"complete": true}\n')

    def half_then_full(tmp):
        with open(tmp, "w") as f:
            f.write('{"comp')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunDirError, match=FIX) as info:
        atomic_write(target, half_then_full)
    assert str(target) in str(info.value)
    assert target.read_text() == '{"complete": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_disk_full_while_checkpointing_names_the_file_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch):
    calls = []

    def save_then_full(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: half a file, then the disk is full
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_then_full)
    with pytest.raises(RunDirError, match=FIX) as info:
        api.train(_cfg(tmp_path / "runs"), verbose=False)
    run_dir = tmp_path / "runs" / "run"
    assert "checkpoint.safetensors" in str(info.value)
    assert load_checkpoint(run_dir / "checkpoint.safetensors")["epoch"] == 1
    assert not temporaries(run_dir) and not (run_dir / "model.safetensors").exists()
    monkeypatch.undo()  # space again: the run resumes from its last complete checkpoint
    assert api.resume(run_dir, verbose=False).summary["epochs"] == 2


def test_store_shard_write_on_a_full_disk_leaves_no_shard(tmp_path, monkeypatch):
    from kdforge.store import SoftLabelStoreWriter
    from kdforge.store import files as store_files
    from tests.store.builders import META, layout_of, random_views

    layout = layout_of()
    writer = SoftLabelStoreWriter(tmp_path / "store", layout, META, samples_per_shard=4)
    lo, hi = writer.shard_samples(0)
    views = random_views(layout, layout.num_records, torch.Generator().manual_seed(0))
    V = layout.views_per_sample
    records = writer.encode(**{k: v[lo * V:hi * V] for k, v in views.items()})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_files.os, "fsync", full)
    with pytest.raises(RunDirError, match=FIX):
        writer.write_shard(0, records)
    assert not writer.shard_path(0).exists() and not temporaries(tmp_path / "store")
    monkeypatch.undo()
    assert writer.pending_shards()[0] == 0


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    cfg = _cfg(tmp_path / "runs")
    result = api.train(cfg, verbose=False)
    path = result.run_dir / "metrics.jsonl"
    whole = read_metrics(result.run_dir)
    with open(path, "a") as f:
        f.write('{"epoch": 3, "lo')  # killed (or the disk filled) mid-append
    assert read_metrics(result.run_dir) == whole
    assert api.resume(result.run_dir, verbose=False).summary["epochs"] == 2
    assert path.read_text().count("\n") == len(whole)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 200 KiB tmpfs (needs root and a kernel that lets this process mount)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_real_full_tmpfs_refuses_the_run_and_a_failed_write_leaves_nothing(tiny_tmpfs):
    with pytest.raises(RunDirError, match=FIX):
        api.train(_cfg(tiny_tmpfs / "runs"), verbose=False)
    big = {"w": torch.zeros(100_000)}  # 400 kB: does not fit
    target = tiny_tmpfs / "model.safetensors"
    with pytest.raises(RunDirError, match=FIX) as info:
        atomic_write(target, lambda tmp: save_file(big, tmp))
    assert str(target) in str(info.value)
    assert list(tiny_tmpfs.iterdir()) == []

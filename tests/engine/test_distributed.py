"""Two CPU processes under torchrun give the same result as one process (same global batch)."""

import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from kdforge import api
from kdforge.config import parse_config
from kdforge.engine.checkpoint import load_checkpoint
from tests.conftest import synthetic_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node 2 ARGS`` on 127.0.0.1, one
    thread per process; asserts it exits 0 (showing its stderr if not)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    base = synthetic_config(tmp_path, train={"epochs": 2},
                            student={"name": "mlp", "hidden": [16]},  # no BN, no dropout
                            optim={"name": "sgd", "lr": 0.1})
    one = api.train(parse_config({**base, "name": "one"}), verbose=False)

    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, "name": "two"}))
    torchrun("-m", "kdforge.cli", "train", str(cfg_path), "--quiet")

    def state(name):
        return load_checkpoint(tmp_path / "runs" / name / "checkpoint.safetensors")

    s1, s2 = state("one"), state("two")
    assert s1["global_step"] == s2["global_step"] == 2 * 3  # 96 samples / 32 per step
    for key, value in s1["modules"]["student"].items():
        torch.testing.assert_close(s2["modules"]["student"][key], value, rtol=1e-5, atol=1e-6)
    two = api.load_run_summary(tmp_path / "runs" / "two")
    for metric, value in one.summary["test"].items():
        assert two["test"][metric] == pytest.approx(value, abs=1e-5), metric


@pytest.mark.slow
def test_two_process_min_max_step_equals_one_process(tmp_path):
    """A step with two optimizer groups (phases in turn) under DDP: gradients of each phase
    are averaged over the ranks, so 2 x 16 samples equal one process's 32."""
    from safetensors.torch import load_file

    from tests.engine.toy_steps import train_adversarial

    train_adversarial(str(tmp_path / "one"), epochs=2)
    torchrun("-m", "tests.engine.toy_steps", str(tmp_path / "two"), "2",
             cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    for name in ("model.safetensors", "model-adversary.safetensors"):
        one, two = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
        for key, value in one.items():
            torch.testing.assert_close(two[key], value, rtol=1e-5, atol=1e-6)

"""Fuzz the config loader: every YAML document either loads or raises a ``ConfigError``
(issue 14, "bad input never gives a traceback").

Documents are built from a valid config of each kind (a run, a soft-label store, a
compression pipeline) by setting, adding and deleting keys at random -- real section
and key names and unknown ones -- with values of every YAML type: nulls, booleans, huge
and non-finite numbers, odd paths (``~nosuchuser``, NUL bytes, very long names), nested
junk, binary and timestamp tags; plus raw text that is not a mapping or not YAML at all,
and ``--set`` overrides. A config that loads must also be writable as the run directory's
``config.yaml`` (what a run does first). :data:`CASES` counts the documents tried
(docs/reliability.md); deterministic (``derandomize``) and a few seconds on one core.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdforge.compress.config import CompressConfig
from kdforge.config import RunConfig, SoftLabelConfig, load_config, parse_config
from kdforge.core.errors import KDForgeError

#: examples per property; KDFORGE_FUZZ_EXAMPLES raises it for a longer search
EXAMPLES = int(os.environ.get("KDFORGE_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
CASES = 0

RUN = {
    "name": "run", "seed": 0, "output_dir": "runs",
    "data": {"name": "synthetic", "batch_size": 32, "num_train": 64, "num_test": 32,
             "num_classes": 4, "val_fraction": 0.25},
    "student": {"name": "mlp", "hidden": [16]},
    "teacher": {"name": "mlp", "weights": "teacher.safetensors"},
    "view": {"name": "consistent"},
    "losses": [{"name": "ce"}, {"name": "kd", "weight": 0.9, "T": 4}],
    "optim": {"name": "sgd", "lr": 0.05, "betas": [0.9, 0.999]},
    "schedule": {"name": "cosine", "milestones": [1.0]},
    "train": {"epochs": 1, "device": "cpu"},
    "scheme": {"name": "dml"},
    "eval_teacher": {"run": "runs/teacher"},
}
STORE = {
    "name": "store", "output_dir": "stores",
    "data": RUN["data"], "teacher": {"run": "runs/teacher"},
    "view": {"name": "consistent"},
    "store": {"views_per_sample": 2, "top_k": 2, "samples_per_shard": 16, "views_from": "s"},
}
COMPRESS = {
    "name": "c", "output_dir": "runs", "run": "runs/teacher",
    "stages": [{"name": "prune", "params_ratio": 0.5}, {"name": "int8"}],
    "finetune": {"epochs": 1, "optim": {"name": "adamw", "lr": 0.002}},
    "chains": {"none": [], "kd": [{"name": "kd", "T": 4}]},
    "latency": {"batches": [1], "repeats": 2},
}
KINDS = {"run": (RunConfig, RUN), "soft-labels": (SoftLabelConfig, STORE),
         "compress": (CompressConfig, COMPRESS)}

ODD_PATHS = ["", " ", "~", "~nosuchuser_kdforge/x", "a\x00b", "/", "/dev/null", "/proc/self",
             "..", "x" * 5000, "runs/{seed}", "C:\\\\win", "-rf", "é/ü", "\n"]
NUMBERS = [0, -1, 1, 2**31, 2**63, 10**400, -(10**30), 0.5, -0.0, 1e308, 1e-320,
           float("inf"), float("-inf"), float("nan")]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NUMBERS), st.integers(), st.floats(),
    st.sampled_from(ODD_PATHS), st.text(max_size=12),
    st.sampled_from(["sgd", "cosine", "kd", "ce", "mlp", "synthetic", "consistent", "fp16",
                     "cuda:7", "auto", "drop", "merge", "resnet8", "timm:nope", "store"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()),
                                                 inner, max_size=4)), max_leaves=10)


def _keys(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and list indices) into ``doc``."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _keys(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _keys(v, (*prefix, i))
    return out


@st.composite
def mutated(draw, base: dict[str, Any]) -> Any:
    """``base`` with a few keys set to junk, added (unknown names) or deleted."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = _keys(doc)
        op = draw(st.sampled_from(["set", "set", "add", "delete"]))
        if not paths or not isinstance(doc, dict):
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if op == "set":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["lr", "epochs", "T", "weight", "root", "bogus",
                                         "store", "run", "name", "classes", "rest"]))] = \
                draw(values)
    return doc


junk_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "null", "[]", "- 1\n- 2", "42", "{", "a: [", "a: !!binary zz",
                     "x: !!python/object/apply:os.system ['true']", "? [a]\n: 1",
                     "data: &a [*a]", "%YAML 9.9\n---\na: 1", "\x00", "\ufeffname: x",
                     "name: run\ndata: {name: synthetic}\nstudent: {name: mlp}\n" * 2,
                     "name: 2020-01-01\ndata: {name: synthetic, when: 2020-01-01}\n"
                     "student: {name: mlp}\n",
                     "data: {name: synthetic, blob: !!binary gAR9lC4=}\nstudent: {name: mlp}\n",
                     "data: {name: synthetic, s: !!set {a, b}}\nstudent: {name: mlp}\n"]),
)


def _check(kind: str, text: str | None, tmp: Path, overrides: list[str] = ()) -> None:
    """Load ``text`` as a config file of ``kind``: it loads (and can be written back as
    YAML) or raises a kdforge error; anything else fails the test."""
    global CASES
    CASES += 1
    model, _ = KINDS[kind]
    path = tmp / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(path, list(overrides), kind=model)
    except KDForgeError:
        return
    text_out = cfg.to_yaml() if hasattr(cfg, "to_yaml") else yaml.safe_dump(cfg.to_dict())
    assert isinstance(yaml.safe_load(text_out), dict)
    if model is RunConfig:
        from kdforge import api

        try:
            api.check_names(cfg)
        except KDForgeError:
            pass


def _dump(doc: Any) -> str:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)


@pytest.mark.parametrize("kind", list(KINDS))
def test_valid_base_documents_load(kind, tmp_path):
    model, base = KINDS[kind]
    assert isinstance(parse_config(base, kind=model), model)


@pytest.mark.parametrize("kind", list(KINDS))
@SETTINGS
@given(data=st.data())
def test_mutated_documents_load_or_raise_a_kdforge_error(kind, tmp_path, data):
    doc = data.draw(mutated(KINDS[kind][1]))
    _check(kind, _dump(doc), tmp_path)


@SETTINGS
@given(text=junk_text, kind=st.sampled_from(list(KINDS)))
def test_junk_text_loads_or_raises_a_kdforge_error(text, kind, tmp_path):
    _check(kind, text, tmp_path)


override_keys = st.sampled_from([
    "name", "seed", "data", "data.root", "data.batch_size", "data.classes", "data.classes.0",
    "student", "student.name", "teacher", "teacher.run", "teacher.0.run", "losses.0.T",
    "losses.5.T", "losses.-1.weight", "optim.lr", "optim.betas", "optim.betas.0",
    "train.epochs", "train.precision", "schedule.milestones", "scheme.name", "view", "a.b.c",
    "", ".", "..", "train..epochs", "store.top_k", "stages.0.name", "chains.kd.0.T",
])
override_values = st.one_of(st.sampled_from(["", "null", "~", "[", "{a: 1}", "[1, 2]", "1e999",
                                             "-5", "nan", "!!binary zz", "yes", "0x10",
                                             "x" * 300, "'", "a=b", "!!python/name:os.system"]),
                            st.text(max_size=10))


@SETTINGS
@given(kind=st.sampled_from(list(KINDS)),
       overrides=st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", override_keys,
                                              override_values), st.text(max_size=10)),
                          min_size=1, max_size=3))
def test_overrides_load_or_raise_a_kdforge_error(kind, overrides, tmp_path):
    _check(kind, _dump(KINDS[kind][1]), tmp_path, overrides)


def test_cases_were_tried():
    """Run last in this module: the count quoted in docs/reliability.md."""
    print(f"config fuzz: {CASES} documents tried ({EXAMPLES} per property)")
    assert CASES == 0 or CASES >= 4 * EXAMPLES

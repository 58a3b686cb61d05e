"""CRD against its formula (explicit loops), its memory bank, checkpoints and torch.distributed."""

from __future__ import annotations

import io
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from kdforge import CE, Batch, ConfigError, Distiller, Outputs, ShapeMismatchError, build_loss
from kdforge.core import comm
from kdforge.losses.contrastive import CRD, momentum_update_
from tests.conftest import TinyNet

N, D, K, TEMP, M = 6, 3, 4, 0.2, 0.5
F_S = [[0.5, -1.0, 2.0, 0.1], [1.5, 0.3, -0.2, 0.7]]            # (B=2, 4)
F_T = [[0.2, 0.4, -0.6, 1.0, 0.0], [-1.2, 0.8, 0.5, 0.3, -0.1]]  # (B=2, 5)
INDEX = [4, 1]
BANK_S = [[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [-0.5, 0.5, 0.7], [0.3, -0.9, 0.1],
          [1.0, 0.0, 0.0], [0.2, 0.2, -0.9]]
BANK_T = [[0.0, 0.0, 1.0], [0.7, 0.7, 0.0], [-0.6, 0.0, 0.8], [0.1, 0.9, -0.4],
          [-1.0, 0.0, 0.0], [0.5, -0.5, 0.5]]
SEED = 7


# -- helpers computing the formula independently ---------------------------------------------
def embed(x, linear):
    w, b = linear.weight.tolist(), linear.bias.tolist()
    y = [sum(w[o][i] * x[i] for i in range(len(x))) + b[o] for o in range(len(b))]
    norm = math.sqrt(sum(v * v for v in y))
    return [v / norm for v in y]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def nce(anchors, bank, rows, z, n, k):
    c = k * (1.0 / n)
    total = 0.0
    for b, anchor in enumerate(anchors):
        p = [math.exp(dot(anchor, bank[j]) / TEMP) / z for j in rows[b]]
        total += math.log(p[0] / (p[0] + c))
        total += sum(math.log(c / (p[j] + c)) for j in range(1, k + 1))
    return -total / len(anchors)


def make_term(**options) -> CRD:
    options = {"student_layer": "s", "teacher_layer": "t", "feat_dim": D, "nce_k": K,
               "nce_t": TEMP, "nce_m": M, "num_samples": N,
               "generator": torch.Generator().manual_seed(SEED), **options}
    return CRD(**options)


def sides(f_s=F_S, f_t=F_T, index=INDEX, requires_grad=False):
    s = torch.tensor(f_s, requires_grad=requires_grad)
    t = torch.tensor(f_t, requires_grad=requires_grad)
    idx = None if index is None else torch.tensor(index)
    return Outputs(torch.zeros(len(f_s), 3), {"s": s}), Outputs(torch.zeros(len(f_t), 3), {"t": t}), \
        Batch(s.detach(), index=idx)


def hand_made_term(**options) -> CRD:
    term = make_term(**options)
    student, teacher, batch = sides()
    term.setup(student, teacher, batch)
    term.memory_student.copy_(torch.tensor(BANK_S))
    term.memory_teacher.copy_(torch.tensor(BANK_T))
    return term


def expected_rows(n=N, k=K):
    negatives = torch.randint(0, n, (len(INDEX), k), generator=torch.Generator().manual_seed(SEED))
    return [[INDEX[b]] + negatives[b].tolist() for b in range(len(INDEX))]


# -- the value ------------------------------------------------------------------------------
@pytest.mark.parametrize("full_scores", [True, False])
def test_crd_matches_nce_formula_on_hand_made_bank(full_scores):
    term = hand_made_term()
    term._full_scores = full_scores
    student, teacher, batch = sides()
    v_s = [embed(x, term.embed_student) for x in F_S]
    v_t = [embed(x, term.embed_teacher) for x in F_T]
    rows = expected_rows()
    # Z: N times the mean of exp(score / T) over the first batch's B x (K+1) scores
    z_s = N * sum(math.exp(dot(v_s[b], BANK_T[j]) / TEMP) for b in range(2) for j in rows[b]) / 10
    z_t = N * sum(math.exp(dot(v_t[b], BANK_S[j]) / TEMP) for b in range(2) for j in rows[b]) / 10
    expected = nce(v_s, BANK_T, rows, z_s, N, K) + nce(v_t, BANK_S, rows, z_t, N, K)

    got = term(student, teacher, batch)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert term.z.tolist() == pytest.approx([z_s, z_t], rel=1e-5)


def test_z_is_estimated_once_then_frozen():
    term = hand_made_term()
    student, teacher, batch = sides()
    term(student, teacher, batch)
    z = term.z.clone()
    term(student, teacher, batch)
    assert torch.equal(term.z, z)


def test_score_paths_agree():
    torch.manual_seed(0)
    a = hand_made_term()
    torch.manual_seed(0)
    b = hand_made_term()  # the same heads
    a._full_scores, b._full_scores = True, False
    for _ in range(3):
        assert a(*sides()).item() == pytest.approx(b(*sides()).item(), rel=1e-6)
    assert torch.allclose(a.memory_student, b.memory_student, atol=1e-7)


def test_negatives_are_capped_at_n_minus_one():
    term = hand_made_term(nce_k=100)
    drawn = []
    sample = term.sample_negatives
    term.sample_negatives = lambda b, k, device: drawn.append(k) or sample(b, k, device)
    term(*sides())
    assert drawn == [N - 1]


# -- the memory bank --------------------------------------------------------------------------
def test_momentum_update_of_the_batch_rows():
    term = hand_made_term()
    v_s = [embed(x, term.embed_student) for x in F_S]
    v_t = [embed(x, term.embed_teacher) for x in F_T]
    term(*sides())
    for bank, start, new in ((term.memory_student, BANK_S, v_s), (term.memory_teacher, BANK_T, v_t)):
        for row in range(N):
            if row in INDEX:
                b = INDEX.index(row)
                mixed = [M * old + (1 - M) * v for old, v in zip(start[row], new[b], strict=True)]
                norm = math.sqrt(sum(v * v for v in mixed))
                want = [v / norm for v in mixed]
            else:
                want = start[row]
            assert bank[row].tolist() == pytest.approx(want, abs=1e-6)


def test_bank_is_not_updated_in_eval_mode():
    term = hand_made_term().eval()
    term(*sides())
    assert torch.equal(term.memory_student, torch.tensor(BANK_S))
    assert torch.equal(term.memory_teacher, torch.tensor(BANK_T))


def test_duplicate_rows_are_updated_in_order():
    bank = torch.tensor(BANK_S)
    values = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    momentum_update_(bank, torch.tensor([2, 0, 2]), values, 0.5)
    want = [list(r) for r in BANK_S]
    for row, v in zip([2, 0, 2], values.tolist(), strict=True):
        mixed = [0.5 * a + 0.5 * b for a, b in zip(want[row], v, strict=True)]
        norm = math.sqrt(sum(x * x for x in mixed))
        want[row] = [x / norm for x in mixed]
    assert bank.tolist() == [pytest.approx(r, abs=1e-6) for r in want]


# -- gradients ----------------------------------------------------------------------------------
def test_gradients_reach_student_and_both_heads_not_teacher():
    term = hand_made_term()
    student, teacher, batch = sides(requires_grad=True)
    term(student, teacher, batch).backward()
    assert student.features["s"].grad is not None and student.features["s"].grad.abs().sum() > 0
    assert teacher.features["t"].grad is None
    for head in (term.embed_student, term.embed_teacher):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_distiller_end_to_end_trains_heads_and_student_not_teacher():
    torch.manual_seed(0)
    student, teacher = TinyNet(num_classes=4, width=4), TinyNet(num_classes=4, width=6)
    crd = build_loss("crd", student_layer="pool", teacher_layer="pool", nce_k=8)
    crd.bind_dataset_size(16)
    distiller = Distiller(student, teacher, [CE(), crd])
    x, y, index = torch.randn(5, 1, 8, 8), torch.randint(0, 4, (5,)), torch.arange(5) * 3
    out = distiller(x, y, index=index)
    assert torch.isfinite(out.loss) and set(out.parts) == {"ce", "crd"}
    out.loss.backward()
    params = {id(p) for p in distiller.trainable_parameters()}
    for head in (crd.embed_student, crd.embed_teacher):
        assert head.weight.grad.abs().sum() > 0 and id(head.weight) in params
    assert student.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert crd.embed_student.in_features == 16 and crd.embed_teacher.in_features == 24


# -- errors ---------------------------------------------------------------------------------------
def test_missing_index_is_a_clear_error():
    term = hand_made_term()
    with pytest.raises(ConfigError, match="batch.index"):
        term(*sides(index=None))


def test_index_out_of_range_is_a_clear_error():
    term = hand_made_term()
    with pytest.raises(ConfigError, match="N=6"):
        term(*sides(index=[0, 6]))


def test_unknown_dataset_size_is_a_clear_error():
    term = make_term(num_samples=None)
    with pytest.raises(ConfigError, match="bind_dataset_size"):
        term.setup(*sides())
    term.bind_dataset_size(N)
    term.setup(*sides())
    assert term.memory_student.shape == (N, D)
    with pytest.raises(ConfigError, match="training set has 10"):
        term.bind_dataset_size(10)


def test_forward_before_setup_and_shape_errors():
    with pytest.raises(ConfigError, match="setup"):
        make_term()(*sides())
    student, teacher, batch = sides(f_t=F_T + [F_T[0]])
    with pytest.raises(ShapeMismatchError, match=r"\(2, 4\).*\(3, 5\)"):
        make_term().setup(student, teacher, batch)
    with pytest.raises(ConfigError, match="teacher"):
        make_term().setup(student, None, batch)


def test_wrong_layer_name_lists_close_names():
    crd = CRD(student_layer="pol", teacher_layer="pool", num_samples=16)
    with pytest.raises(ConfigError, match="pool"):
        Distiller(TinyNet(), TinyNet(), [crd])(torch.randn(2, 1, 8, 8), index=torch.arange(2))


def test_build_loss_options():
    term = build_loss("crd", student_layer="pool", teacher_layer="pool", nce_k=4096)
    assert isinstance(term, CRD) and term.nce_k == 4096 and term.weight == pytest.approx(0.8)
    assert (term.feat_dim, term.nce_t, term.nce_m) == (128, 0.07, 0.5)
    with pytest.raises(ConfigError, match="no option 'nce_tau'"):
        build_loss("crd", student_layer="pool", teacher_layer="pool", nce_tau=0.1)
    with pytest.raises(ConfigError, match="student_layer"):
        build_loss("crd", teacher_layer="pool")
    with pytest.raises(ConfigError, match="nce_m"):
        build_loss("crd", student_layer="pool", teacher_layer="pool", nce_m=1.0)


# -- checkpoints ----------------------------------------------------------------------------------
def test_resume_from_state_dict_restores_the_bank_exactly():
    torch.manual_seed(1)
    first = hand_made_term()
    first(*sides())
    first(*sides())
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    assert {"memory_student", "memory_teacher", "z"} <= set(first.state_dict())

    torch.manual_seed(2)  # different heads and bank before loading
    resumed = make_term()
    resumed.setup(*sides())
    assert not torch.equal(resumed.memory_student, first.memory_student)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    for name in ("memory_student", "memory_teacher", "z"):
        assert torch.equal(getattr(resumed, name), getattr(first, name))
    # one more step with the same negatives gives the same loss and the same bank
    resumed.generator = torch.Generator().manual_seed(3)
    first.generator = torch.Generator().manual_seed(3)
    assert resumed(*sides()).item() == first(*sides()).item()
    assert torch.equal(resumed.memory_teacher, first.memory_teacher)


# -- torch.distributed ----------------------------------------------------------------------------
GLOBAL_BATCH, DATA_SIZE = 8, 16
STEP_INDICES = [[3, 0, 7, 12, 5, 9, 14, 1], [5, 2, 3, 11, 15, 8, 0, 6]]  # overlapping steps


def global_features():
    g = torch.Generator().manual_seed(11)
    return [(torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 2, 5, generator=g))
            for _ in STEP_INDICES]


def ddp_term() -> CRD:
    torch.manual_seed(0)
    term = CRD(student_layer="s", teacher_layer="t", feat_dim=4, nce_k=5, num_samples=DATA_SIZE)
    f_s, f_t = global_features()[0]
    term.setup(Outputs(f_s, {"s": f_s}), Outputs(f_t, {"t": f_t}), Batch(f_s))
    return term


def run_steps(term: CRD, rank: int, world: int) -> None:
    for (f_s, f_t), index in zip(global_features(), STEP_INDICES, strict=True):
        rows = slice(rank, None, world)  # rank r takes r, r+W, ... as the training sampler
        s = f_s[rows].clone().requires_grad_(True)
        loss = term(Outputs(s, {"s": s}), Outputs(f_t[rows], {"t": f_t[rows]}),
                    Batch(s.detach(), index=torch.tensor(index)[rows]))
        loss.backward()


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        # rank 1 starts from other heads and banks: setup must broadcast rank 0's
        term = ddp_term() if rank == 0 else _seeded_elsewhere_term()
        run_steps(term, rank, world)
        wrapped = _ddp_trained_term()
        uneven = comm.all_gather_cat(torch.arange(3 + 2 * rank, dtype=torch.float32) + 10 * rank)
        mean = comm.all_reduce_mean(torch.tensor([float(rank)]))
        torch.save({"student": term.memory_student, "teacher": term.memory_teacher, "z": term.z,
                    "uneven": uneven, "mean": mean, "world": comm.world_size(),
                    "trained": wrapped.state_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _ddp_trained_term() -> CRD:
    """Two optimizer steps of a term inside DistributedDataParallel (heads trained)."""
    term = _seeded_elsewhere_term()
    ignored = list(term.synced_buffers)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(term, ignored)
    model = DistributedDataParallel(term)
    optimizer = torch.optim.SGD(term.parameters(), lr=0.5)
    rank, world = dist.get_rank(), dist.get_world_size()
    for (f_s, f_t), index in zip(global_features(), STEP_INDICES, strict=True):
        rows = slice(rank, None, world)
        loss = model(Outputs(f_s[rows], {"s": f_s[rows]}), Outputs(f_t[rows], {"t": f_t[rows]}),
                     Batch(f_s[rows], index=torch.tensor(index)[rows]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return term


def _seeded_elsewhere_term() -> CRD:
    torch.manual_seed(99)
    term = CRD(student_layer="s", teacher_layer="t", feat_dim=4, nce_k=5, num_samples=DATA_SIZE)
    f_s, f_t = global_features()[0]
    term.setup(Outputs(f_s, {"s": f_s}), Outputs(f_t, {"t": f_t}), Batch(f_s))
    return term


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_banks_agree_across_ranks_and_with_one_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["world"] == 2
    # (1) every rank holds the same bank and normalisation constants
    assert torch.equal(r0["student"], r1["student"]) and torch.equal(r0["teacher"], r1["teacher"])
    assert torch.equal(r0["z"], r1["z"]) and bool((r0["z"] > 0).all())
    # ... also with trained heads inside DistributedDataParallel (buffers not broadcast)
    t0, t1 = r0["trained"], r1["trained"]
    assert t0.keys() == t1.keys() and all(torch.equal(t0[k], t1[k]) for k in t0)
    assert not torch.equal(t0["embed_student.weight"], _seeded_elsewhere_term().embed_student.weight)
    # (2) the bank of one process that sees the whole global batch at once
    single = ddp_term()
    run_steps(single, 0, 1)
    assert torch.allclose(r0["student"], single.memory_student, atol=1e-6)
    assert torch.allclose(r0["teacher"], single.memory_teacher, atol=1e-6)
    touched = sorted(set(sum(STEP_INDICES, [])))
    untouched = [i for i in range(DATA_SIZE) if i not in touched]
    assert not torch.allclose(single.memory_student[touched], ddp_term().memory_student[touched])
    assert torch.equal(single.memory_student[untouched], ddp_term().memory_student[untouched])
    # the helpers: unequal sizes are gathered in rank order; the mean of 0 and 1
    assert r0["uneven"].tolist() == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 14.0]
    assert torch.equal(r0["uneven"], r1["uneven"])
    assert r0["mean"].item() == pytest.approx(0.5)


def test_comm_helpers_alone():
    x = torch.arange(4.0, requires_grad=True)
    gathered = comm.all_gather_cat(x)
    assert torch.equal(gathered, x.detach()) and not gathered.requires_grad
    assert comm.all_reduce_mean(torch.tensor([3])).item() == 3.0
    assert not comm.is_distributed() and comm.world_size() == 1 and comm.rank() == 0

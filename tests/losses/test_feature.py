"""Feature terms against their formulas, recomputed with explicit loops on tiny tensors."""

import math
import warnings

import pytest
import torch

from kdforge import Batch, ConfigError, Distiller, Outputs, ShapeMismatchError, build_loss
from kdforge.losses.feature import AB, AT, FT, NST, VID, FitNet, ReviewKD
from kdforge.models import create_model
from tests.conftest import TinyNet

B = Batch(torch.zeros(2, 1))


def outs(**features) -> Outputs:
    """Outputs with dummy logits; keyword names use '_' for '.' in layer names."""
    return Outputs(torch.zeros(2, 3), {k.replace("_", "."): v for k, v in features.items()})


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def avg_pool_1d(x, size):
    """Adaptive average pooling of the last dim, by its definition (floor/ceil windows)."""
    n = x.shape[-1]
    cols = []
    for i in range(size):
        a, b = (i * n) // size, -((-(i + 1) * n) // size)
        cols.append(sum(x[..., j] for j in range(a, b)) / (b - a))
    return torch.stack(cols, -1)


def mse(a, b):
    flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b, strict=True)) / len(flat_a)


# -- FitNets ------------------------------------------------------------------------------------


def test_fitnet_matches_formula_on_1d_maps_with_spatial_matching():
    s, t = rand(2, 2, 4, seed=1), rand(2, 3, 2, seed=2)
    term = FitNet(student_layer="a", teacher_layer="b")
    term.setup(outs(a=s), outs(b=t), B)
    bn = term.regressor.norm
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.2]))
        bn.running_mean.copy_(torch.tensor([0.3, -0.1, 0.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.0]))
    term.eval()
    w = term.regressor.proj.weight.detach()  # (3, 2, 1), no bias before BatchNorm
    pooled = avg_pool_1d(s, 2)       # the student resized to the teacher's 2 positions
    expected = 0.0
    for b in range(2):
        for o in range(3):
            for j in range(2):
                r = sum(float(w[o, c, 0]) * float(pooled[b, c, j]) for c in range(2))
                r = (r - float(bn.running_mean[o])) / math.sqrt(float(bn.running_var[o]) + bn.eps)
                r = r * bn.weight[o].item() + bn.bias[o].item()
                expected += (r - float(t[b, o, j])) ** 2
    got = term(outs(a=s), outs(b=t), B)
    assert got.item() == pytest.approx(expected / 12, rel=1e-5)


def test_fitnet_vectors_use_a_linear_regressor_and_gradients_reach_it():
    s, t = rand(4, 5).requires_grad_(True), rand(4, 3, seed=1)
    term = FitNet(student_layer="a", teacher_layer="b")
    term.setup(outs(a=s.detach()), outs(b=t), B)
    assert isinstance(term.regressor.proj, torch.nn.Linear)
    term(outs(a=s), outs(b=t), B).backward()
    assert s.grad.abs().sum() > 0
    assert term.regressor.proj.weight.grad.abs().sum() > 0


def test_fitnet_zero_when_the_regressed_student_equals_the_teacher():
    t = rand(2, 3, 4)
    term = FitNet(student_layer="a", teacher_layer="b")
    term.setup(outs(a=t), outs(b=t), B)
    with torch.no_grad():
        term.regressor.proj.weight.copy_(torch.eye(3).unsqueeze(-1))
    term.regressor.norm.eps = 1e-30  # an exact identity (older torch refuses eps=0)
    term.eval()  # BatchNorm with running mean 0, variance 1: the identity
    assert term(outs(a=t.clone()), outs(b=t), B).item() == pytest.approx(0, abs=1e-10)


def test_fitnet_rank_mismatch_names_both_shapes():
    term = FitNet(student_layer="pool", teacher_layer="blocks.1")
    with pytest.raises(ShapeMismatchError) as err:
        term.setup(outs(pool=torch.zeros(2, 16)), outs(blocks_1=torch.zeros(2, 8, 5)), B)
    msg = str(err.value)
    assert "(2, 16)" in msg and "(2, 8, 5)" in msg and "'pool'" in msg and "same kind" in msg


def test_fitnet_forward_before_setup_is_explained():
    with pytest.raises(ConfigError, match="setup"):
        FitNet(student_layer="a", teacher_layer="b")(outs(a=rand(2, 2)), outs(b=rand(2, 2)), B)


# -- Attention transfer -------------------------------------------------------------------------


def attention_list(f_b, p=2.0):
    """Per-sample attention: mean over channels of |F|^p at each position, L2-normalised."""
    c = f_b.shape[0]
    flat = f_b.reshape(c, -1)
    q = [sum(abs(float(flat[k, j])) ** p for k in range(c)) / c for j in range(flat.shape[1])]
    norm = math.sqrt(sum(v * v for v in q))
    return [v / norm for v in q]


def test_at_matches_formula_summed_over_pairs_1d_and_2d():
    s1, t1 = rand(2, 3, 4, seed=1), rand(2, 2, 4, seed=2)        # 1-D, channels differ
    s2, t2 = rand(2, 2, 4, 4, seed=3), rand(2, 5, 2, 2, seed=4)  # 2-D, student pooled 4->2
    pooled = s2.reshape(2, 2, 2, 2, 2, 2).mean(dim=(3, 5))         # 2x2 average pooling
    expected = 0.0
    for s, t in ((s1, t1), (pooled, t2)):
        pair = 0.0
        for b in range(2):
            qs, qt = attention_list(s[b]), attention_list(t[b])
            pair += sum((x - y) ** 2 for x, y in zip(qs, qt, strict=True))
        expected += pair / (2 * len(qs))
    term = AT(student_layers=["a", "c"], teacher_layers=["b", "d"])
    got = term(outs(a=s1, c=s2), outs(b=t1, d=t2), B)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_at_zero_for_identical_maps_and_gradient_reaches_student():
    t = rand(2, 3, 5)
    term = AT(student_layer="a", teacher_layer="b")
    assert term(outs(a=t.clone()), outs(b=t), B).item() == pytest.approx(0, abs=1e-12)
    # a rescaled student has the same normalised attention
    assert term(outs(a=3 * t), outs(b=t), B).item() == pytest.approx(0, abs=1e-10)
    s = rand(2, 4, 5, seed=1).requires_grad_(True)
    term(outs(a=s), outs(b=t), B).backward()
    assert s.grad.abs().sum() > 0


def test_at_refuses_vectors_and_mixed_ranks():
    term = AT(student_layers=["a"], teacher_layers=["b"])
    with pytest.raises(ShapeMismatchError, match=r"\(2, 8\).*\(2, 4, 3\)"):
        term.setup(outs(a=torch.zeros(2, 8)), outs(b=torch.zeros(2, 4, 3)), B)
    with pytest.raises(ShapeMismatchError, match="different kinds"):
        term.setup(outs(a=torch.zeros(2, 8, 3)), outs(b=torch.zeros(2, 4, 3, 3)), B)


# -- Neuron selectivity transfer ----------------------------------------------------------------


def normalised_rows(f_b):
    rows = f_b.reshape(f_b.shape[0], -1).tolist()
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]


def poly_mean(xs, ys, d=2, c=0.0):
    vals = [(sum(a * b for a, b in zip(x, y, strict=True)) + c) ** d for x in xs for y in ys]
    return sum(vals) / len(vals)


def test_nst_matches_squared_mmd_with_polynomial_kernel():
    s, t = rand(2, 3, 2, 2, seed=1), rand(2, 4, 2, 2, seed=2)
    expected = 0.0
    for b in range(2):
        fs, ft = normalised_rows(s[b]), normalised_rows(t[b])
        expected += poly_mean(ft, ft) + poly_mean(fs, fs) - 2 * poly_mean(fs, ft)
    got = NST(student_layer="a", teacher_layer="b")(outs(a=s), outs(b=t), B)
    assert got.item() == pytest.approx(expected / 2, rel=1e-5)
    # options: degree and c
    expected3 = sum(
        poly_mean(ft, ft, 3, 0.5) + poly_mean(fs, fs, 3, 0.5) - 2 * poly_mean(fs, ft, 3, 0.5)
        for fs, ft in ((normalised_rows(s[b]), normalised_rows(t[b])) for b in range(2))
    ) / 2
    got3 = NST(student_layer="a", teacher_layer="b", degree=3, c=0.5)(outs(a=s), outs(b=t), B)
    assert got3.item() == pytest.approx(expected3, rel=1e-5)


def test_nst_zero_for_identical_maps_and_gradient_reaches_student():
    t = rand(2, 3, 6)
    term = NST(student_layers=["a"], teacher_layers=["b"])
    assert term(outs(a=t.clone()), outs(b=t), B).item() == pytest.approx(0, abs=1e-6)
    s = rand(2, 5, 12, seed=3).requires_grad_(True)  # pooled 12 -> 6 positions
    value = term(outs(a=s), outs(b=t), B)
    assert value.item() > 0
    value.backward()
    assert s.grad.abs().sum() > 0


def test_nst_refuses_vectors():
    with pytest.raises(ShapeMismatchError, match=r"\(2, 100\).*\(2, 640\).*feature maps"):
        NST(student_layer="a", teacher_layer="b").setup(
            outs(a=torch.zeros(2, 100)), outs(b=torch.zeros(2, 640)), B)


# -- Factor transfer ----------------------------------------------------------------------------


def make_ft(s, t, **kw):
    term = FT(student_layer="a", teacher_layer="b", **kw)
    term.setup(outs(a=s), outs(b=t), B)
    return term


def test_ft_matches_formula_on_the_factors():
    s, t = rand(2, 3, 4, seed=1), rand(2, 4, 4, seed=2)
    term = make_ft(s, t)
    term.eval()
    term.pretrained.fill_(True)
    factor_s, factor_t = term.factors(outs(a=s), outs(b=t))
    assert factor_s.shape == factor_t.shape == (2, 2, 4)  # rate 0.5 of the teacher's 4 channels
    # the factors are the translator's and the paraphraser encoder's outputs
    assert torch.allclose(factor_s, term.translator(s))
    assert torch.allclose(factor_t, term.paraphraser.encoder(t))
    expected = 0.0
    for b in range(2):
        fs, ft = factor_s[b].flatten().tolist(), factor_t[b].flatten().tolist()
        ns, nt = math.sqrt(sum(v * v for v in fs)), math.sqrt(sum(v * v for v in ft))
        expected += sum(abs(x / ns - y / nt) for x, y in zip(fs, ft, strict=True))
    got = term(outs(a=s), outs(b=t), B)
    assert got.item() == pytest.approx(expected / (2 * 8), rel=1e-5)


def test_ft_pretrain_reduces_reconstruction_error_then_freezes_the_paraphraser():
    mixing = rand(4, 2, seed=9)  # teacher features of rank 2: a factor of 2 channels can code them
    teacher_feats = [torch.einsum("oc,bcl->bol", mixing, rand(8, 2, 6, seed=i)).relu()
                     for i in range(3)]
    term = make_ft(rand(8, 2, 6), teacher_feats[0], pretrain_epochs=15, pretrain_lr=1e-2)

    def reconstruction_error():
        with torch.no_grad():
            return sum(float(((term.paraphraser(t) - t) ** 2).mean()) for t in teacher_feats)

    before = reconstruction_error()
    term.pretrain(lambda: (outs(b=t) for t in teacher_feats))
    assert reconstruction_error() < 0.5 * before
    assert len(term.pretrain_history) == 15
    assert term.pretrain_history[-1] < term.pretrain_history[0]
    assert bool(term.pretrained)
    assert not any(p.requires_grad for p in term.paraphraser.parameters())


def test_ft_paraphraser_is_frozen_in_student_training():
    student, teacher = TinyNet(width=3), TinyNet(width=4)
    term = FT(student_layer="relu", teacher_layer="relu", pretrain_epochs=1)
    distiller = Distiller(student, teacher, [build_loss("ce"), term])
    batch = Batch(rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    distiller.prepare(batch)
    distiller.pretrain_terms(lambda: [batch])
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert not any(id(p) in trainable for p in term.paraphraser.parameters())
    assert all(id(p) in trainable for p in term.translator.parameters())
    frozen = [p.detach().clone() for p in term.paraphraser.parameters()]
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    out = distiller(batch.inputs, batch.targets)
    out.loss.backward()
    opt.step()
    assert all(p.grad is None for p in term.paraphraser.parameters())
    assert all(torch.equal(a, p) for a, p in zip(frozen, term.paraphraser.parameters(),
                                                 strict=True))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert term.translator.encoder[0].weight.grad.abs().sum() > 0


def test_ft_zero_when_the_translator_reproduces_the_teacher_factor_and_warns_unfitted():
    t = rand(2, 4, 5)
    term = make_ft(t, t)
    with pytest.warns(UserWarning, match="not been pretrained"):
        assert term(outs(a=t), outs(b=t), B).item() > 0
    # translator = paraphraser encoder (BatchNorm at its identity) on the same feature
    convs = [m for m in term.paraphraser.encoder if isinstance(m, torch.nn.Conv1d)]
    tconvs = [m for m in term.translator.encoder if isinstance(m, torch.nn.Conv1d)]
    with torch.no_grad():
        for src, dst in zip(convs, tconvs, strict=True):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    for m in term.translator.encoder:
        if isinstance(m, torch.nn.BatchNorm1d):
            m.reset_running_stats()  # the first call above was in training mode
            m.eps = 1e-30  # 1 + eps == 1 in float32: an exact identity
    term.eval()
    assert term(outs(a=t.clone()), outs(b=t), B).item() == pytest.approx(0, abs=1e-7)


def test_ft_vectors_are_maps_with_one_position():
    s, t = rand(4, 10), rand(4, 6, seed=1)
    term = make_ft(s, t)
    term.pretrained.fill_(True)
    s = s.requires_grad_(True)
    term(outs(a=s), outs(b=t), B).backward()
    assert s.grad.abs().sum() > 0


# -- Activation boundaries ----------------------------------------------------------------------


def make_identity_ab(s_list, t_list, **kw):
    names = [f"l{i}" for i in range(len(s_list))]
    term = AB(student_layers=names, teacher_layers=names, **kw)
    so = Outputs(torch.zeros(2, 3), dict(zip(names, s_list, strict=True)))
    to = Outputs(torch.zeros(2, 3), dict(zip(names, t_list, strict=True)))
    term.setup(so, to, B)
    for connector, s in zip(term.connectors, s_list, strict=True):
        c = s.shape[1]
        with torch.no_grad():
            connector[0].weight.copy_(torch.eye(c).view(c, c, *([1] * (s.dim() - 2))))
        connector[1].eps = 1e-30  # an exact identity (older torch refuses eps=0)
    term.eval()  # BatchNorm with running statistics 0 / 1: the connectors are the identity
    return term, so, to


def ab_elementwise(r, t, m):
    if t <= 0:
        return (r + m) ** 2 if r > -m else 0.0
    return (r - m) ** 2 if r <= m else 0.0


def test_ab_matches_alternative_loss_with_layer_weights_and_scale():
    s0, t0 = rand(2, 2, 3, seed=1), rand(2, 2, 3, seed=2)
    s1, t1 = rand(2, 3, 2, seed=3), rand(2, 3, 2, seed=4)
    t0[0, 0, 0] = 0.0  # t = 0 counts as "off"
    term, so, to = make_identity_ab([s0, s1], [t0, t1], margin=0.7)
    expected = 0.0
    for w, s, t in ((0.5, s0, t0), (1.0, s1, t1)):  # deepest weight 1, then 1/2
        total = sum(ab_elementwise(float(r), float(v), 0.7)
                    for r, v in zip(s.flatten(), t.flatten(), strict=True))
        expected += w * total / 2
    got = term(so, to, B)
    assert got.item() == pytest.approx(3e-3 * expected, rel=1e-5)


def test_ab_zero_when_the_student_is_beyond_the_margin_on_the_teachers_side():
    t = rand(2, 3, 4)
    s = torch.where(t > 0, 1.0 + t.abs(), -1.0 - t.abs())
    term, so, to = make_identity_ab([s], [t])
    assert term(so, to, B).item() == 0.0
    # the same student without the margin is penalised
    term2, so2, to2 = make_identity_ab([0.1 * torch.sign(t)], [t])
    assert term2(so2, to2, B).item() > 0


def test_ab_gradient_reaches_student_and_connector_and_warns_on_post_relu_teacher():
    s, t = rand(4, 2, 5).requires_grad_(True), rand(4, 3, 5, seed=1)
    term = AB(student_layers="a", teacher_layers="b")
    term.setup(outs(a=s.detach()), outs(b=t), B)
    term(outs(a=s), outs(b=t), B).backward()
    assert s.grad.abs().sum() > 0 and term.connectors[0][0].weight.grad.abs().sum() > 0
    with pytest.warns(UserWarning, match="pre-activation"):
        AB(student_layers="a", teacher_layers="b").setup(outs(a=s), outs(b=t.relu()), B)


def test_ab_init_stage_is_a_stop_epoch_schedule():
    term = build_loss("ab", student_layers=["x"], teacher_layers=["y"], stop_epoch=5)
    assert term.weight_at(4.9) == 1.0 and term.weight_at(5.0) == 0.0


# -- Variational information distillation -------------------------------------------------------


def softplus(x):
    return math.log1p(math.exp(x))


def test_vid_matches_gaussian_negative_log_likelihood():
    s, t = rand(2, 2, 3, seed=1), rand(2, 3, 3, seed=2)
    term = VID(student_layer="a", teacher_layer="b", mid_channels=4)
    term.setup(outs(a=s), outs(b=t), B)
    head = term.heads[0]
    with torch.no_grad():
        head.alpha.copy_(torch.tensor([0.3, -1.0, 2.0]))
    w1, w2, w3 = (head.regressor[i].weight[..., 0].tolist() for i in (0, 2, 4))
    var = [softplus(a) + 1e-5 for a in head.alpha.tolist()]
    expected, n = 0.0, 0
    for b in range(2):
        for j in range(3):
            x = [float(s[b, c, j]) for c in range(2)]
            h1 = [max(0.0, sum(w1[o][c] * x[c] for c in range(2))) for o in range(4)]
            h2 = [max(0.0, sum(w2[o][c] * h1[c] for c in range(4))) for o in range(4)]
            mu = [sum(w3[o][c] * h2[c] for c in range(4)) for o in range(3)]
            for c in range(3):
                expected += 0.5 * (math.log(var[c]) + (float(t[b, c, j]) - mu[c]) ** 2 / var[c])
                n += 1
    got = term(outs(a=s), outs(b=t), B)
    assert got.item() == pytest.approx(expected / n, rel=1e-5)


def test_vid_initial_variance_and_gradients_reach_alpha_regressor_and_student():
    s, t = rand(2, 2, 2, 2, seed=1).requires_grad_(True), rand(2, 3, 2, 2, seed=2)
    term = VID(student_layers=["a"], teacher_layers=["b"])
    term.setup(outs(a=s.detach()), outs(b=t), B)
    assert torch.allclose(term.heads[0].variance(), torch.full((3,), 5.0), atol=1e-5)
    term(outs(a=s), outs(b=t), B).backward()
    head = term.heads[0]
    assert head.alpha.grad.abs().sum() > 0
    assert all(head.regressor[i].weight.grad.abs().sum() > 0 for i in (0, 2, 4))
    assert s.grad.abs().sum() > 0


def test_vid_minimum_for_a_perfect_mean_is_half_the_log_variance():
    t = rand(2, 3, 4).abs()  # non-negative, so identity convolutions through ReLUs keep it
    term = VID(student_layer="a", teacher_layer="b")
    term.setup(outs(a=t), outs(b=t), B)
    for i in (0, 2, 4):
        with torch.no_grad():
            term.heads[0].regressor[i].weight.copy_(torch.eye(3).unsqueeze(-1))
    got = term(outs(a=t.clone()), outs(b=t), B)
    assert got.item() == pytest.approx(0.5 * math.log(5.0), rel=1e-5)
    # and any other mean scores worse
    assert term(outs(a=t + 0.1), outs(b=t), B).item() > got.item()


# -- Knowledge review ---------------------------------------------------------------------------


def hcl_reference(fs, ft):
    loss, w, tot = mse(fs, ft), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= fs.shape[2]:
            continue
        w /= 2
        loss += w * mse(avg_pool_1d(fs, level), avg_pool_1d(ft, level))
        tot += w
    return loss / tot


def conv_1x1(w, x):  # w (O, C), x (C, L)
    return [[sum(w[o][c] * x[c][j] for c in range(len(x))) for j in range(len(x[0]))]
            for o in range(len(w))]


def conv_3(w, x):  # w (O, C, 3), x (C, L), zero padding 1
    n = len(x[0])
    return [[sum(w[o][c][k] * x[c][j + k - 1] for c in range(len(x)) for k in range(3)
                 if 0 <= j + k - 1 < n) for j in range(n)] for o in range(len(w))]


def bn_eval(x, eps=1e-5):  # running statistics 0 / 1, weight 1, bias 0
    return [[v / math.sqrt(1 + eps) for v in row] for row in x]


def test_hcl_weights_levels_below_the_map_size():
    fs, ft = rand(2, 3, 8, seed=1), rand(2, 3, 8, seed=2)
    from kdforge.losses.feature import hierarchical_context_loss
    assert hierarchical_context_loss(fs, ft).item() == pytest.approx(hcl_reference(fs, ft),
                                                                    rel=1e-5)
    short_s, short_t = fs[..., :3], ft[..., :3]  # levels 2 and 1 only (weights 1, 1/2, 1/4)
    expected = (mse(short_s, short_t) + 0.5 * mse(avg_pool_1d(short_s, 2), avg_pool_1d(short_t, 2))
                + 0.25 * mse(short_s.mean(-1, keepdim=True), short_t.mean(-1, keepdim=True))) / 1.75
    assert hierarchical_context_loss(short_s, short_t).item() == pytest.approx(expected, rel=1e-5)


def test_reviewkd_matches_fusion_and_hcl_recomputed_by_hand():
    s0, s1 = rand(2, 2, 4, seed=1), rand(2, 3, 2, seed=2)   # student stages, shallow -> deep
    t0, t1 = rand(2, 2, 4, seed=3), rand(2, 2, 2, seed=4)   # teacher stages
    term = ReviewKD(student_layers=["s0", "s1"], teacher_layers=["t0", "t1"], mid_channels=2)
    so, to = outs(s0=s0, s1=s1), outs(t0=t0, t1=t1)
    term.setup(so, to, B)
    term.eval()
    deep, shallow = term.abfs[1], term.abfs[0]
    assert deep.att_conv is None and shallow.att_conv is not None
    w1 = {k: m[0].weight[..., 0].tolist() for k, m in (("d", deep.conv1), ("s", shallow.conv1))}
    w3 = {k: m[0].weight.tolist() for k, m in (("d", deep.conv2), ("s", shallow.conv2))}
    wa = shallow.att_conv[0].weight[..., 0].tolist()  # (2, 2 * mid)
    ba = shallow.att_conv[0].bias.tolist()
    out0, out1 = [], []
    for b in range(2):
        x1 = bn_eval(conv_1x1(w1["d"], s1[b].tolist()))
        out1.append(bn_eval(conv_3(w3["d"], x1)))
        x0 = bn_eval(conv_1x1(w1["s"], s0[b].tolist()))
        y = [[row[(j * 2) // 4] for j in range(4)] for row in x1]  # nearest 2 -> 4
        z = x0 + y                                                   # channel concatenation
        att = [[1 / (1 + math.exp(-(sum(wa[o][c] * z[c][j] for c in range(4)) + ba[o])))
                for j in range(4)] for o in range(2)]
        fused = [[x0[c][j] * att[0][j] + y[c][j] * att[1][j] for j in range(4)]
                 for c in range(2)]
        out0.append(bn_eval(conv_3(w3["s"], fused)))
    expected = hcl_reference(torch.tensor(out0), t0) + hcl_reference(torch.tensor(out1), t1)
    assert term(so, to, B).item() == pytest.approx(expected, rel=1e-5)


def test_reviewkd_gradients_reach_student_and_fusion_and_vectors_are_one_position():
    s0 = rand(2, 2, 2, 2).requires_grad_(True)
    s1 = rand(2, 6, seed=1).requires_grad_(True)  # a pooled stage (B, D)
    t0, t1 = rand(2, 3, 4, 4, seed=2), rand(2, 5, seed=3)
    term = ReviewKD(student_layers=["s0", "s1"], teacher_layers=["t0", "t1"])
    so, to = outs(s0=s0, s1=s1), outs(t0=t0, t1=t1)
    term.setup(so, to, B)
    term(so, to, B).backward()
    assert s0.grad.abs().sum() > 0 and s1.grad.abs().sum() > 0
    assert term.abfs[0].att_conv[0].weight.grad.abs().sum() > 0


def test_reviewkd_mixed_ranks_and_list_lengths_are_explained():
    term = ReviewKD(student_layers=["a", "c"], teacher_layers=["b", "d"])
    with pytest.raises(ShapeMismatchError, match="maps of one rank"):
        term.setup(outs(a=rand(2, 2, 4), c=rand(2, 2, 2, 2)), outs(b=rand(2, 2, 4),
                                                                    d=rand(2, 2, 2, 2)), B)
    with pytest.raises(ConfigError, match="give as many on each side"):
        ReviewKD(student_layers=["a", "b"], teacher_layers=["c"])


# -- options, registry, errors through a Distiller ----------------------------------------------

LAYERS = ["blocks.0", "blocks.1", "blocks.2"]
PREACT = ["blocks.0.1", "blocks.1.1", "blocks.2.1"]
OPTIONS = {
    "fitnet": {"student_layer": "blocks.1", "teacher_layer": "blocks.1"},
    "at": {"student_layers": LAYERS, "teacher_layers": LAYERS},
    "nst": {"student_layer": "blocks.2", "teacher_layer": "blocks.2"},
    "ft": {"student_layer": "blocks.2", "teacher_layer": "blocks.2", "pretrain_epochs": 1},
    "ab": {"student_layers": PREACT, "teacher_layers": PREACT},
    "vid": {"student_layers": LAYERS[1:], "teacher_layers": LAYERS[1:]},
    "reviewkd": {"student_layers": LAYERS, "teacher_layers": LAYERS},
}
DEFAULT_WEIGHTS = {"fitnet": 100, "at": 1000, "nst": 50, "ft": 200, "ab": 1, "vid": 1,
                   "reviewkd": 1}
CLASSES = {"fitnet": FitNet, "at": AT, "nst": NST, "ft": FT, "ab": AB, "vid": VID,
           "reviewkd": ReviewKD}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_build_loss_defaults_and_unknown_option(name):
    term = build_loss(name, **OPTIONS[name])
    assert isinstance(term, CLASSES[name]) and term.weight == DEFAULT_WEIGHTS[name]
    assert term.student_features() and term.teacher_features()
    with pytest.raises(ConfigError, match="has no option 'layer'"):
        build_loss(name, layer="x", **OPTIONS[name])
    with pytest.raises(ConfigError, match="name"):
        build_loss(name)  # no layers named


def cnn1d(channels):
    return create_model("cnn1d", 10, (1, 40), channels=channels)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_wrong_layer_name_lists_close_names(name):
    options = dict(OPTIONS[name])
    if "student_layer" in options:
        options["student_layer"] = "blokcs.1"
    else:
        options["student_layers"] = ["blokcs.1"] + options["student_layers"][1:]
    with pytest.raises(ConfigError, match="closest valid names:.*'blocks"):
        Distiller(cnn1d([4, 8, 8]), cnn1d([8, 16, 16]), [build_loss(name, **options)])


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_end_to_end_1d_cnn(name):
    student, teacher = cnn1d([4, 8, 8]), cnn1d([8, 16, 16])
    term = build_loss(name, **OPTIONS[name])
    distiller = Distiller(student, teacher, [build_loss("ce"), term])
    batch = Batch(rand(4, 1, 40), torch.tensor([0, 1, 2, 3]))
    distiller.prepare(batch)
    distiller.pretrain_terms(lambda: [batch])
    out = distiller(batch.inputs, batch.targets)
    assert torch.isfinite(out.loss) and torch.isfinite(out.parts[name])
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the term computes in float32
        value = term(distiller.student_outputs(batch.inputs), distiller.teach(batch), batch)
    assert value.dtype == torch.float32 and torch.isfinite(value)


TINY_OPTIONS = {
    "fitnet": {"student_layer": "relu", "teacher_layer": "relu"},
    "at": {"student_layers": ["conv", "relu"], "teacher_layers": ["conv", "relu"]},
    "nst": {"student_layer": "relu", "teacher_layer": "relu"},
    "ft": {"student_layer": "relu", "teacher_layer": "relu", "pretrain_epochs": 1},
    "ab": {"student_layer": "bn", "teacher_layer": "bn"},
    "vid": {"student_layer": "pool", "teacher_layer": "relu"},
    "reviewkd": {"student_layers": ["relu", "pool"], "teacher_layers": ["relu", "pool"]},
}


@pytest.mark.parametrize("name", sorted(TINY_OPTIONS))
def test_end_to_end_2d_tiny_net(name):
    student, teacher = TinyNet(width=3), TinyNet(width=5)
    term = build_loss(name, **TINY_OPTIONS[name])
    distiller = Distiller(student, teacher, [build_loss("ce"), term])
    batch = Batch(rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
    distiller.prepare(batch)
    distiller.pretrain_terms(lambda: [batch])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pretrained FT does not warn
        out = distiller(batch.inputs, batch.targets)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert student.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term.parameters() if p.requires_grad)

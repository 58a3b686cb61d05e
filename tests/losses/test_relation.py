"""Relation terms (SP, RKD, PKT, CC, FSP, ICKD) against their formulas, with explicit loops."""

import math

import pytest
import torch

from kdforge import Batch, ConfigError, Distiller, Outputs, ShapeMismatchError, build_loss
from kdforge.losses import CC, CE, FSP, ICKD, PKT, RKD, SP
from tests.conftest import TinyNet

torch.manual_seed(0)
FS = torch.randn(4, 2, 3)  # student feature (B, C, L)
FT = torch.randn(4, 3, 2)  # teacher feature, another shape (B, C, L)
ES = torch.randn(4, 3)     # student embedding (B, D)
ET = torch.randn(4, 5)     # teacher embedding (B, D)


def outputs(**features):
    return Outputs(torch.zeros(next(iter(features.values())).shape[0], 3), dict(features))


def pair(fs, ft, s="s", t="t"):
    return outputs(**{s: fs}), outputs(**{t: ft})


def rows(x):
    """A (B, ...) tensor as a list of flattened python rows."""
    return [x[b].flatten().tolist() for b in range(x.shape[0])]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True))


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# -- SP ------------------------------------------------------------------------------------------

def hand_sp(fs, ft):
    b = fs.shape[0]

    def gram(f):
        r = rows(f)
        g = [[dot(r[i], r[j]) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    gs, gt = gram(fs), gram(ft)
    return sum((gs[i][j] - gt[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_matches_formula_and_sums_layer_pairs():
    s, t = pair(FS, FT)
    assert SP(student_layer="s", teacher_layer="t")(s, t, Batch(FS)).item() == pytest.approx(
        hand_sp(FS, FT), rel=1e-5)
    s = outputs(a=FS, b=ES)
    t = outputs(c=FT, d=ET)
    term = SP(student_layers=["a", "b"], teacher_layers=["c", "d"])
    assert term.student_features() == ["a", "b"] and term.teacher_features() == ["c", "d"]
    assert term(s, t, Batch(FS)).item() == pytest.approx(hand_sp(FS, FT) + hand_sp(ES, ET),
                                                         rel=1e-5)


def test_sp_minimum_and_gradient():
    term = SP(student_layer="s", teacher_layer="t")
    assert term(*pair(FT, FT.clone()), Batch(FT)).item() == pytest.approx(0, abs=1e-7)
    # the row normalisation makes it blind to a global scale of the features
    assert term(*pair(3 * FT, FT), Batch(FT)).item() == pytest.approx(0, abs=1e-7)
    fs = FS.clone().requires_grad_(True)
    term(*pair(fs, FT), Batch(fs)).backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0


def test_sp_layer_options_are_checked():
    with pytest.raises(ConfigError, match="student_layer='...' and teacher_layer='...'"):
        SP()
    with pytest.raises(ConfigError, match="not both"):
        SP(student_layer="a", teacher_layer="b", student_layers=["a"], teacher_layers=["b"])
    with pytest.raises(ConfigError, match="2 names and teacher_layers 1"):
        SP(student_layers=["a", "b"], teacher_layers=["c"])
    term = build_loss("sp", student_layers=["a", "b"], teacher_layers=["c", "d"], weight=3000)
    assert term.student_features() == ["a", "b"] and term.weight == 3000
    with pytest.raises(ConfigError, match="has no option 'layer'.*student_layers"):
        build_loss("sp", layer="a")
    with pytest.raises(ShapeMismatchError) as err:
        SP(student_layer="s", teacher_layer="t").setup(*pair(FS, FT[:3]), Batch(FS))
    assert "(4, 2, 3)" in str(err.value) and "(3, 3, 2)" in str(err.value)


# -- RKD -----------------------------------------------------------------------------------------

def hand_rkd(es, et, w_dist, w_angle):
    b = es.shape[0]

    def relations(e):
        r = rows(e)
        d = [[math.dist(r[i], r[j]) for j in range(b)] for i in range(b)]
        mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
        d = [[v / mu for v in row] for row in d]
        ang = {}
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    if i in (j, k):
                        ang[i, j, k] = 0.0
                        continue
                    u = [x - y for x, y in zip(r[j], r[i], strict=True)]
                    v = [x - y for x, y in zip(r[k], r[i], strict=True)]
                    ang[i, j, k] = dot(u, v) / (math.sqrt(dot(u, u)) * math.sqrt(dot(v, v)))
        return d, ang

    ds, a_s = relations(es)
    dt, a_t = relations(et)
    dist = sum(smooth_l1(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2
    angle = sum(smooth_l1(a_s[key] - a_t[key]) for key in a_s) / b**3
    return w_dist * dist + w_angle * angle


@pytest.mark.parametrize(("w_dist", "w_angle"), [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)])
def test_rkd_matches_formula(w_dist, w_angle):
    term = RKD(student_layer="s", teacher_layer="t", w_dist=w_dist, w_angle=w_angle)
    got = term(*pair(FS, FT), Batch(FS))
    assert got.item() == pytest.approx(hand_rkd(FS, FT, w_dist, w_angle), rel=1e-4)


def test_rkd_distance_term_uses_huber_beyond_one():
    # a far outlier in the student makes some normalised distance gaps exceed 1
    es = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    et = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    term = RKD(student_layer="s", teacher_layer="t", w_dist=1, w_angle=0)
    assert term(*pair(es, et), Batch(es)).item() == pytest.approx(hand_rkd(es, et, 1, 0),
                                                                  rel=1e-5)


def test_rkd_minimum_is_scale_invariant_and_gradient_reaches_student():
    term = RKD(student_layer="s", teacher_layer="t")
    assert term(*pair(FT, FT.clone()), Batch(FT)).item() == pytest.approx(0, abs=1e-6)
    assert term(*pair(2.5 * FT + 1.0, FT), Batch(FT)).item() == pytest.approx(0, abs=1e-5)
    fs = FS.clone().requires_grad_(True)
    term(*pair(fs, FT), Batch(fs)).backward()
    assert torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0


def test_rkd_options():
    assert build_loss("rkd", student_layer="a", teacher_layer="b", w_angle=0).w_angle == 0
    with pytest.raises(ConfigError, match="not both 0"):
        RKD(student_layer="a", teacher_layer="b", w_dist=0, w_angle=0)
    with pytest.raises(ConfigError, match="has no option 'student_layers'"):
        build_loss("rkd", student_layers=["a"], teacher_layers=["b"])


# -- PKT -----------------------------------------------------------------------------------------

def hand_pkt(fs, ft, eps=1e-7):
    b = fs.shape[0]

    def conditional(f):
        r = [[v / (math.sqrt(dot(x, x)) + eps) for v in x] for x in rows(f)]
        k = [[(dot(r[i], r[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[v / sum(row) for v in row] for row in k]

    ps, pt = conditional(fs), conditional(ft)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps))
               for i in range(b) for j in range(b)) / b**2


def test_pkt_matches_formula_minimum_and_gradient():
    term = PKT(student_layer="s", teacher_layer="t")
    assert term(*pair(FS, FT), Batch(FS)).item() == pytest.approx(hand_pkt(FS, FT), rel=1e-5)
    assert term(*pair(FT, FT.clone()), Batch(FT)).item() == pytest.approx(0, abs=1e-7)
    fs = FS.clone().requires_grad_(True)
    loss = term(*pair(fs, FT), Batch(fs))
    assert loss.item() > 0
    loss.backward()
    assert fs.grad.abs().sum() > 0
    assert build_loss("pkt", student_layer="a", teacher_layer="b").weight == 30000
    with pytest.raises(ConfigError, match="eps must be > 0"):
        PKT(student_layer="a", teacher_layer="b", eps=0)


# -- CC ------------------------------------------------------------------------------------------

def hand_cc(es, et, gamma=0.4, order=2):
    b = es.shape[0]

    def corr(e):
        r = [[v / math.sqrt(dot(x, x)) for v in x] for x in rows(e)]
        return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p)
                      * dot(r[i], r[j]) ** p for p in range(order + 1))
                 for j in range(b)] for i in range(b)]

    cs, ct = corr(es), corr(et)
    return sum((cs[i][j] - ct[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.0, 3)])
def test_cc_matches_taylor_rbf_formula(gamma, order):
    fs = torch.randn(4, 5)
    term = CC(student_layer="s", teacher_layer="t", gamma=gamma, P=order)
    got = term(*pair(fs, ET), Batch(fs))
    assert got.item() == pytest.approx(hand_cc(fs, ET, gamma, order), rel=1e-5)
    # the Taylor series tends to the RBF kernel of the normalised embeddings
    e = torch.nn.functional.normalize(ET, dim=1)
    rbf = torch.exp(-gamma * torch.cdist(e, e) ** 2)
    assert torch.allclose(CC(student_layer="s", teacher_layer="t", gamma=gamma, P=12)
                          .correlation(ET), rbf, atol=1e-5)


def test_cc_minimum_gradient_and_adapter():
    term = CC(student_layer="s", teacher_layer="t")
    assert term(*pair(ET, ET.clone()), Batch(ET)).item() == pytest.approx(0, abs=1e-8)
    with pytest.raises(ShapeMismatchError, match=r"\(4, 3\).*\(4, 5\).*run setup"):
        term(*pair(ES, ET), Batch(ES))
    term.setup(*pair(ES, ET), Batch(ES))
    assert term.adapter is not None and term.adapter.proj.weight.shape == (5, 3)
    es = ES.clone().requires_grad_(True)
    loss = term(*pair(es, ET), Batch(es))
    assert loss.item() > 0
    loss.backward()
    assert es.grad.abs().sum() > 0 and term.adapter.proj.weight.grad.abs().sum() > 0
    # features of any rank are flattened: (4, 3, 2) -> (4, 6)
    other = CC(student_layer="s", teacher_layer="t")
    other.setup(*pair(FT, ET), Batch(FT))
    assert other.adapter.proj.weight.shape == (5, 6)
    equal = CC(student_layer="s", teacher_layer="t")
    equal.setup(*pair(torch.randn(4, 5), ET), Batch(ET))
    assert equal.adapter is None


def test_cc_options():
    term = build_loss("cc", student_layer="a", teacher_layer="b", gamma=0.5, P=3)
    assert (term.gamma, term.P, term.weight) == (0.5, 3, 0.02)
    with pytest.raises(ConfigError, match="Taylor order"):
        CC(student_layer="a", teacher_layer="b", P=1.5)
    with pytest.raises(ConfigError, match="has no option 'order'"):
        build_loss("cc", student_layer="a", teacher_layer="b", order=2)


# -- FSP -----------------------------------------------------------------------------------------

def hand_fsp_matrix(a, b):
    """(B, Ca, H, W) and (B, Cb, H/2, W/2) maps: 2x2 average pooling of a, then the mean
    over positions of the channel products."""
    bsz, ca, h, w = a.shape
    cb = b.shape[1]
    pooled = [[[[sum(a[n, c, 2 * i + di, 2 * j + dj].item() for di in (0, 1) for dj in (0, 1))
                 / 4 for j in range(w // 2)] for i in range(h // 2)] for c in range(ca)]
              for n in range(bsz)]
    positions = [(i, j) for i in range(h // 2) for j in range(w // 2)]
    return [[[sum(pooled[n][c][i][j] * b[n, d, i, j].item() for i, j in positions)
              / len(positions) for d in range(cb)] for c in range(ca)] for n in range(bsz)]


def test_fsp_matches_formula_with_spatial_pooling():
    torch.manual_seed(1)
    s0, s1, s2 = torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    t0, t1, t2 = torch.randn(2, 2, 4, 4), torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    term = FSP(student_layers=["a", "b", "c"], teacher_layers=["x", "y", "z"])
    s, t = outputs(a=s0, b=s1, c=s2), outputs(x=t0, y=t1, z=t2)
    term.setup(s, t, Batch(s0))

    def mse(g, h):
        flat_g = [v for m in g for row in m for v in row]
        flat_h = [v for m in h for row in m for v in row]
        return sum((x - y) ** 2 for x, y in zip(flat_g, flat_h, strict=True)) / len(flat_g)

    pair01 = mse(hand_fsp_matrix(s0, s1), hand_fsp_matrix(t0, t1))
    # the second pair has equal sizes: no pooling
    g_s = [[[sum(s1[n, c].flatten()[p].item() * s2[n, d].flatten()[p].item() for p in range(4)) / 4
             for d in range(3)] for c in range(3)] for n in range(2)]
    g_t = [[[sum(t1[n, c].flatten()[p].item() * t2[n, d].flatten()[p].item() for p in range(4)) / 4
             for d in range(3)] for c in range(3)] for n in range(2)]
    pair12 = mse(g_s, g_t)
    assert term(s, t, Batch(s0)).item() == pytest.approx((pair01 + pair12) / 2, rel=1e-5)


def test_fsp_minimum_gradient_and_1d_maps():
    maps = [torch.randn(3, 2, 8), torch.randn(3, 4, 4)]
    term = FSP(student_layers=["a", "b"], teacher_layers=["c", "d"])
    s, t = outputs(a=maps[0], b=maps[1]), outputs(c=maps[0].clone(), d=maps[1].clone())
    term.setup(s, t, Batch(maps[0]))
    assert term(s, t, Batch(maps[0])).item() == pytest.approx(0, abs=1e-8)
    fa = torch.randn(3, 2, 8, requires_grad=True)
    # the teacher's maps may have other spatial sizes: only channels must agree
    t = outputs(c=torch.randn(3, 2, 6), d=torch.randn(3, 4, 2))
    loss = term(outputs(a=fa, b=maps[1]), t, Batch(fa))
    assert loss.item() > 0
    loss.backward()
    assert fa.grad.abs().sum() > 0


def test_fsp_shape_errors_name_both_shapes():
    term = FSP(student_layers=["a", "b"], teacher_layers=["c", "d"])
    s = outputs(a=torch.randn(2, 4, 8, 8), b=torch.randn(2, 8, 4, 4))
    t = outputs(c=torch.randn(2, 16, 8, 8), d=torch.randn(2, 8, 4, 4))
    with pytest.raises(ShapeMismatchError) as err:
        term.setup(s, t, Batch(torch.zeros(2)))
    msg = str(err.value)
    assert "(2, 4, 8, 8)" in msg and "(2, 16, 8, 8)" in msg and "equal widths" in msg
    with pytest.raises(ShapeMismatchError, match="feature maps"):
        term.setup(outputs(a=torch.randn(2, 4), b=torch.randn(2, 8, 4, 4)),
                   outputs(c=torch.randn(2, 4), d=torch.randn(2, 8, 4, 4)), Batch(torch.zeros(2)))
    with pytest.raises(ConfigError, match="at least 2"):
        FSP(student_layers=["a"], teacher_layers=["b"])
    with pytest.raises(ConfigError, match="student_layers=\\[...\\]"):
        FSP()
    with pytest.raises(ConfigError, match="has no option 'student_layer'"):
        build_loss("fsp", student_layer="a", teacher_layer="b")


# -- ICKD ----------------------------------------------------------------------------------------

def hand_ickd(fs, ft):
    b, c = ft.shape[0], ft.shape[1]

    def corr(f, n):
        r = [f[n, ch].flatten().tolist() for ch in range(f.shape[1])]
        g = [[dot(r[i], r[j]) for j in range(c)] for i in range(c)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    total = 0.0
    for n in range(b):
        gs, gt = corr(fs, n), corr(ft, n)
        total += sum((gs[i][j] - gt[i][j]) ** 2 for i in range(c) for j in range(c))
    return total / (b * c)


def test_ickd_matches_formula_after_its_adapter():
    torch.manual_seed(2)
    fs, ft = torch.randn(3, 2, 4, 4), torch.randn(3, 4, 4, 4)
    term = ICKD(student_layer="s", teacher_layer="t")
    term.setup(*pair(fs, ft), Batch(fs))
    conv = term.adapter.proj
    assert conv.kernel_size == (1, 1) and conv.in_channels == 2 and conv.out_channels == 4
    with torch.no_grad():
        adapted = term.adapter(fs)
    got = term(*pair(fs, ft), Batch(fs))
    assert got.item() == pytest.approx(hand_ickd(adapted, ft), rel=1e-5)


def test_ickd_minimum_gradient_reaches_student_and_adapter():
    ft = torch.randn(3, 4, 5)
    term = ICKD(student_layer="s", teacher_layer="t")
    term.setup(*pair(ft, ft), Batch(ft))
    term.adapter = torch.nn.Identity()  # the formula's minimum: equal correlation matrices
    assert term(*pair(ft, ft.clone()), Batch(ft)).item() == pytest.approx(0, abs=1e-8)
    term = ICKD(student_layer="s", teacher_layer="t")
    fs = torch.randn(3, 2, 5, requires_grad=True)
    term.setup(*pair(fs.detach(), ft), Batch(ft))
    loss = term(*pair(fs, ft), Batch(ft))
    assert loss.item() > 0
    loss.backward()
    assert fs.grad.abs().sum() > 0 and term.adapter.proj.weight.grad.abs().sum() > 0


def test_ickd_shape_errors_and_missing_setup():
    term = ICKD(student_layer="s", teacher_layer="t")
    with pytest.raises(ConfigError, match="run setup"):
        term(*pair(FS, FT), Batch(FS))
    with pytest.raises(ShapeMismatchError) as err:
        term.setup(*pair(torch.randn(4, 2, 3, 3), FT), Batch(FS))
    assert "(4, 2, 3, 3)" in str(err.value) and "(4, 3, 2)" in str(err.value)
    term.setup(*pair(ES, ET), Batch(ES))  # (B, D): D channels at one position
    assert torch.isfinite(term(*pair(ES, ET), Batch(ES)))
    assert build_loss("ickd", student_layer="a", teacher_layer="b").weight == 2.5


@pytest.mark.parametrize("make", [
    lambda: SP(student_layer="s", teacher_layer="t"),
    lambda: RKD(student_layer="s", teacher_layer="t"),
    lambda: PKT(student_layer="s", teacher_layer="t"),
    lambda: CC(student_layer="s", teacher_layer="t"),
], ids=["sp", "rkd", "pkt", "cc"])
def test_relation_terms_compute_in_float32_under_autocast(make):
    # embeddings far from the origin: a bf16 Gram matrix would lose the distances
    fs, ft = torch.randn(6, 5) + 30, torch.randn(6, 5) + 30
    term = make()
    term.setup(*pair(fs, ft), Batch(fs))
    want = term(*pair(fs, ft), Batch(fs))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = term(*pair(fs, ft), Batch(fs))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


# -- through a distiller -------------------------------------------------------------------------

def test_wrong_layer_name_lists_close_names():
    with pytest.raises(ConfigError, match="unknown layer .*'relu'"):
        Distiller(TinyNet(), TinyNet(width=8), [SP(student_layer="reluu", teacher_layer="relu")])
    with pytest.raises(ConfigError, match="'pool'"):
        Distiller(TinyNet(), TinyNet(width=8), [RKD(student_layer="pool", teacher_layer="pol")])


E2E = {
    "sp": lambda: SP(student_layer="relu", teacher_layer="relu"),
    "sp_lists": lambda: SP(student_layers=["conv", "pool"], teacher_layers=["conv", "pool"]),
    "rkd": lambda: RKD(student_layer="pool", teacher_layer="pool"),
    "pkt": lambda: PKT(student_layer="pool", teacher_layer="pool"),
    "cc": lambda: CC(student_layer="pool", teacher_layer="pool"),
    "ickd": lambda: ICKD(student_layer="relu", teacher_layer="relu"),
    "fsp": lambda: FSP(student_layers=["conv", "relu", "pool"],
                       teacher_layers=["conv", "relu", "pool"]),
}


@pytest.mark.parametrize("name", list(E2E))
def test_relation_terms_train_a_student_end_to_end(name):
    torch.manual_seed(0)
    term = E2E[name]()
    width = 8 if name == "fsp" else 4  # FSP has no adapter: the teacher's widths
    distiller = Distiller(TinyNet(width=width), TinyNet(width=8), [CE(), term])
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    distiller.prepare(Batch(x, y))
    params = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in params for p in term.parameters())
    out = distiller(x, y)
    assert torch.isfinite(out.loss) and out.parts[term.name].item() > 0
    out.loss.backward()
    assert distiller.student.conv.weight.grad.abs().sum() > 0
    for p in term.parameters():
        assert p.grad is not None


def test_fsp_through_a_distiller_rejects_other_widths():
    term = FSP(student_layers=["conv", "pool"], teacher_layers=["conv", "pool"])
    distiller = Distiller(TinyNet(width=4), TinyNet(width=8), [term])
    with pytest.raises(ShapeMismatchError, match=r"\(6, 4, 8, 8\).*\(6, 8, 8, 8\)"):
        distiller.prepare(Batch(torch.randn(6, 1, 8, 8), torch.zeros(6, dtype=torch.long)))

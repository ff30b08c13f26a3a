"""Unit tests of the method pieces against small hand-computed cases (Eq. 1-7 of docs/micd-method.md)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from micd.methods import METHODS, MethodConfig, build_method, gaussian_rampup
from micd.methods.class_weights import DiffDW, DistDW, distribution_weights, floor_background
from micd.methods.ema import ema_alpha, ema_update, make_teacher
from micd.methods.losses import IGNORE, dice_ce, feature_distance, hard_pseudo_labels, soft_dice_loss, weighted_ce
from micd.methods.masking import apply_mask, block_mask, block_sides
from micd.nets import NetworkConfig
from micd.nets.vnet import SplitBatchNorm3d, split_normalization
from micd.training.schedule import consistency_weight

torch.set_num_threads(1)


def test_block_mask_blocks_and_ratio():
    g = torch.Generator().manual_seed(0)
    m = block_mask((3, 1, 16, 24, 16), ratio=0.5, block=8, generator=g)
    assert m.shape == (3, 1, 16, 24, 16)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    blocks = m.reshape(3, 1, 2, 8, 3, 8, 2, 8)
    assert torch.all(blocks.amin(dim=(3, 5, 7)) == blocks.amax(dim=(3, 5, 7))), "each 8^3 block is constant"
    assert torch.all(block_mask((1, 1, 8, 8, 8), 0.0, 4) == 1)
    assert torch.all(block_mask((1, 1, 8, 8, 8), 1.0, 4) == 0)
    big = block_mask((64, 1, 32, 32, 32), 0.3, 4, torch.Generator().manual_seed(1))
    assert abs(1 - big.mean().item() - 0.3) < 0.02
    odd = block_mask((1, 2, 10, 11, 9), 0.5, 4, torch.Generator().manual_seed(2))
    assert odd.shape == (1, 2, 10, 11, 9) and torch.equal(odd[:, 0], odd[:, 1])


def test_ema_update_and_warmup():
    assert ema_alpha(0, 0.99) == 0.0 and ema_alpha(1, 0.99) == 0.5 and ema_alpha(10_000, 0.99) == 0.99
    s = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    t = make_teacher(s)
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
        s[1].running_mean.fill_(4.0)
    before = [p.clone() for p in t.parameters()]
    ema_update(t, s, 0.75)
    for pb, pt, ps in zip(before, t.parameters(), s.parameters()):
        assert torch.allclose(pt, 0.75 * pb + 0.25 * ps)
    assert torch.allclose(t[1].running_mean, torch.full((2,), 1.0))  # 0.75*0 + 0.25*4
    assert t[1].num_batches_tracked == s[1].num_batches_tracked
    assert not any(p.requires_grad for p in t.parameters())


def test_gaussian_rampup_values():
    assert gaussian_rampup(0, 100, 0.1) == pytest.approx(0.1 * math.exp(-5))
    assert gaussian_rampup(50, 100, 0.1) == pytest.approx(0.1 * math.exp(-1.25))
    assert gaussian_rampup(100, 100, 0.1) == pytest.approx(0.1)
    assert gaussian_rampup(500, 100, 0.1) == pytest.approx(0.1)
    assert gaussian_rampup(-3, 100, 1.0) == pytest.approx(math.exp(-5))


def test_distribution_weights_by_hand():
    w = distribution_weights(torch.tensor([100.0, 10.0, 1.0]))
    assert torch.allclose(w, torch.tensor([0.0, 1.5, 3.0]), atol=1e-5)  # C·log(n_max/n_c)/max log


def test_distdw_ema_update():
    d = DistDW(3, momentum=0.9)
    d.init_from_counts(np.array([100, 10, 1]))
    logits = torch.zeros(1, 3, 1, 1, 111)
    logits[0, 0, ..., :100] = 5
    logits[0, 1, ..., 100:110] = 5
    logits[0, 2, ..., 110:] = 5
    w = d.update(logits)
    assert torch.allclose(w, torch.tensor([0.0, 1.5, 3.0]), atol=1e-4)
    logits2 = torch.zeros(1, 3, 1, 1, 20)
    logits2[0, 0, ..., :10] = 5
    logits2[0, 1, ..., 10:] = 5  # counts 10, 10, 0 -> class 2 absent
    new = distribution_weights(torch.tensor([10.0, 10.0, 0.0]))
    w2 = d.update(logits2)
    assert torch.allclose(w2, 0.9 * torch.tensor([0.0, 1.5, 3.0]) + 0.1 * new, atol=1e-4)


def test_diffdw_first_update_by_hand():
    d = DiffDW(2, accumulate_iters=2)  # momentum 0.5
    target = torch.tensor([[0, 0, 1, 1]]).reshape(1, 1, 1, 4)
    logits = torch.zeros(1, 2, 1, 1, 4)
    logits[0, 0, ..., :3] = 1  # predicts 0,0,0,1 -> dice bg = 2*2/(3+2) = .8, fg = 2*1/(1+2) = 2/3
    logits[0, 1, ..., 3] = 1
    w = d.update(logits, target)
    dice = torch.tensor([0.8, 2 / 3])
    learn = 0.5 * (dice - 1e-8) * torch.log(dice / 1e-8)
    unlearn = torch.zeros(2)
    diff = ((unlearn + 1e-8) / (learn + 1e-8)) ** 0.2
    dw = 0.5 * 1 + 0.5 * (1 - dice)
    expected = diff * dw / (diff * dw).max() * 2
    assert torch.allclose(w, expected, rtol=1e-4)


def test_weighted_ce_matches_formula():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]]).permute(1, 0, 2)  # (N=1, C=2, 2 voxels)
    target = torch.tensor([[0, 1]])
    w = torch.tensor([1.0, 3.0])
    lp = F.log_softmax(logits, 1)[0]
    manual = -(w[0] * lp[0, 0] + w[1] * lp[1, 1]) / (w[0] + w[1])
    assert weighted_ce(logits, target, w).item() == pytest.approx(manual.item(), rel=1e-6)


def test_soft_dice_loss_values():
    target = torch.tensor([[0, 1, 1, 2]]).reshape(1, 1, 1, 4)
    perfect = F.one_hot(target, 3).permute(0, 4, 1, 2, 3).float() * 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 3, 1, 1, 4)  # p = 1/3 everywhere
    # class 1: I = 2/3, P = 4/3, G = 2 -> 1 - (4/3 + 1)/(10/3 + 1); class 2: I = 1/3, P = 4/3, G = 1
    l1 = 1 - (4 / 3 + 1) / (10 / 3 + 1)
    l2 = 1 - (2 / 3 + 1) / (7 / 3 + 1)
    assert soft_dice_loss(uniform, target).item() == pytest.approx((l1 + l2) / 2, rel=1e-5)
    w = torch.tensor([0.0, 1.0, 3.0])
    assert soft_dice_loss(uniform, target, w).item() == pytest.approx((1 * l1 + 3 * l2) / 2, rel=1e-5)  # DHC
    assert dice_ce(uniform, target).item() == pytest.approx(math.log(3) + (l1 + l2) / 2, rel=1e-5)


def test_feature_distances():
    a = torch.randn(2, 4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    b = torch.randn(2, 4, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    assert feature_distance(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_distance(a, b).item() == pytest.approx(feature_distance(b, a).item(), rel=1e-6)
    pa, pb = F.softmax(a, 1), F.softmax(b, 1)
    kl = (pa * (pa.log() - pb.log())).sum(1).mean()
    assert feature_distance(a, b, "kl").item() == pytest.approx(kl.item(), rel=1e-5)
    assert feature_distance(a, b, "mse").item() == pytest.approx(((a - b) ** 2).mean().item(), rel=1e-6)


def _det_net():  # deterministic students: no dropout, no batch statistics
    return NetworkConfig(out_channels=3, filters=4, dropout=0.0, normalization="none")


def test_micd_terms_match_direct_computation():
    torch.manual_seed(0)
    cfg = MethodConfig(mask_ratio=0.0)  # no voxel dropped: masked input == clean input
    m = build_method("micd", _det_net(), 3, cfg)
    x_l = torch.randn(2, 1, 16, 16, 16)
    y_l = torch.randint(0, 3, (2, 16, 16, 16))
    x_u = torch.randn(2, 1, 16, 16, 16)
    terms = m.step(x_l, y_l, x_u, beta=0.5, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x_l, x_u])
    with torch.no_grad():
        za, fa = m.students["student_a"](x)
        zb, fb = m.students["student_b"](x)
    # MICD's default class weights: DHC's with the background floored at the foreground mean
    w_diff, w_dist = floor_background(m.weighting.diffdw.weights), floor_background(m.weighting.distdw.weights)
    mcpc = weighted_ce(za, zb.argmax(1), w_diff) + weighted_ce(zb, za.argmax(1), w_dist)
    cmd = weighted_ce(za, za.argmax(1)) + weighted_ce(zb, zb.argmax(1))  # teachers == students before any step
    cfc = sum(l * feature_distance(a, b) for l, a, b in zip(cfg.cfc_weights, fa, fb))
    sup = dice_ce(za[:2], y_l, w_diff) + dice_ce(zb[:2], y_l, w_dist)
    for name, ref in (("mcpc", mcpc), ("cmd", cmd), ("cfc", cfc), ("sup", sup)):
        assert terms[name].item() == pytest.approx(ref.item(), rel=1e-4), name
    assert terms["total"].item() == pytest.approx((sup + 0.5 * (mcpc + cfc + cmd)).item(), rel=1e-4)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_one_step(name):
    torch.manual_seed(0)
    m = build_method(name, NetworkConfig(out_channels=3, filters=4), 3, MethodConfig())
    opt = torch.optim.SGD(m.students.parameters(), lr=0.01)
    x_l, y_l = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16))
    x_u = torch.randn(2, 1, 16, 16, 16) if m.uses_unlabeled else None
    before = [p.clone() for p in m.students.parameters()]
    terms = m.step(x_l, y_l, x_u, 0.1, torch.Generator().manual_seed(0))
    assert torch.isfinite(terms["total"])
    opt.zero_grad()
    terms["total"].backward()
    opt.step()
    m.after_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.students.parameters()))


@pytest.mark.parametrize("option", [dict(mcpc_mode="clean_from_masked"), dict(mcpc_mode="masked_from_masked"),
                                    dict(cmd_mode="cross_teacher"), dict(cmd_mode="neg_discrepancy"),
                                    dict(cfc_distance="mse", cfc_inputs="clean"), dict(mask_shared=False),
                                    dict(keep_clean_cps=True, cmd_weighted=True)])
def test_micd_alternatives_run(option):
    m = build_method("micd", NetworkConfig(out_channels=2, filters=4), 2, MethodConfig(**option))
    terms = m.step(torch.randn(2, 1, 16, 16, 16), torch.randint(0, 2, (2, 16, 16, 16)), torch.randn(2, 1, 16, 16, 16),
                   0.1, torch.Generator().manual_seed(0))
    assert {"sup", "mcpc", "cfc", "cmd", "total"} <= set(terms) and torch.isfinite(terms["total"])


def test_soft_dice_matches_monai():
    from monai.losses import DiceLoss
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 5, 6, 7, generator=g)
    target = torch.randint(0, 4, (3, 5, 6, 7), generator=g)
    ref = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    assert soft_dice_loss(logits, target).item() == pytest.approx(ref(logits, target.unsqueeze(1)).item(), rel=1e-5)


# ------------------------------------------------------------------ the few-label fixes (issue 9), each an option
def test_background_floor_removes_the_foreground_bias_only():
    w = torch.tensor([0.0, 3.0, 1.0])  # DistDW's form: the majority class (background) gets 0
    f = floor_background(w)
    assert f.tolist() == [2.0, 3.0, 1.0]  # background at the foreground mean, foreground ratios kept
    assert floor_background(torch.tensor([5.0, 3.0, 1.0])).tolist() == [5.0, 3.0, 1.0]  # never lowered


@pytest.mark.parametrize("mode,expect_bg", [("dhc", 0.0), ("dhc-bgfloor", None), ("none", None)])
def test_class_weight_modes(mode, expect_bg):
    m = build_method("dhc", _det_net(), 3, MethodConfig(class_weights=mode))
    m.init_from_label_counts(np.array([1000.0, 50.0, 10.0]))
    za = torch.randn(2, 3, 8, 8, 8)
    w_diff, w_dist = m.class_weights(za, torch.randint(0, 3, (2, 8, 8, 8)), torch.randn(2, 3, 8, 8, 8))
    if mode == "none":
        assert w_diff is None and w_dist is None
        return
    state_bg = m.weighting.distdw.weights[0].item()
    if mode == "dhc":
        assert w_dist[0].item() == pytest.approx(state_bg)
    else:
        assert w_dist[0].item() == pytest.approx(w_dist[1:].mean().item())
        assert w_dist[0].item() > state_bg  # the DistDW state itself stays DHC's


def test_method_defaults_dhc_faithful_micd_fixed():
    dhc = build_method("dhc", _det_net(), 3, MethodConfig())
    micd = build_method("micd", _det_net(), 3, MethodConfig())
    cps = build_method("cps", _det_net(), 3, MethodConfig())
    assert (dhc.option("class_weights"), dhc.option("pseudo_labels")) == ("dhc", "train_pass")
    assert cps.option("pseudo_labels") == "train_pass"
    assert (micd.option("class_weights"), micd.option("pseudo_labels")) == ("dhc-bgfloor", "teacher")
    assert build_method("micd", _det_net(), 3, MethodConfig(class_weights="dhc")).option("class_weights") == "dhc"
    assert [build_method(n, _det_net(), 3, MethodConfig()).option("bn_passes")
            for n in ("mean-teacher", "cps", "dhc", "micd")] == ["joint", "joint", "joint", "separate"]
    with pytest.raises(ValueError, match="bn_passes"):
        build_method("cps", _det_net(), 3, MethodConfig(bn_passes="apart"))


def test_mask_fill_and_block_sides():
    x = torch.randn(2, 1, 16, 24, 16)
    m = block_mask(x.shape, 0.5, 0, torch.Generator().manual_seed(0))
    assert block_sides(0, (32, 48, 32)) == (4, 6, 4) and block_sides(0, (8, 8, 8)) == (2, 2, 2)
    assert block_sides(8, (32, 48, 32)) == (8, 8, 8)
    # an eighth of each axis: blocks of 2x3x2 -> the mask is constant on each block
    blocks = m[:, 0].reshape(2, 8, 2, 8, 3, 8, 2)
    assert torch.equal(blocks.amin((2, 4, 6)), blocks.amax((2, 4, 6)))
    filled = apply_mask(x, m, "min")
    lo = x.amin((1, 2, 3, 4))
    for i in range(2):
        dropped = m[i] == 0
        assert dropped.any() and (~dropped).any()
        assert torch.all(filled[i][dropped] == lo[i])
        assert torch.equal(filled[i][~dropped], x[i][~dropped])
    assert torch.equal(apply_mask(x, m, "zero"), x * m)
    with pytest.raises(ValueError):
        apply_mask(x, m, "mean")


def test_split_batchnorm_keeps_masked_statistics_out():
    bn = SplitBatchNorm3d(3).train()
    clean, masked = torch.randn(2, 3, 4, 4, 4) + 5.0, torch.zeros(2, 3, 4, 4, 4)
    ref = torch.nn.BatchNorm3d(3).train()
    with split_normalization(bn, 2):
        out = bn(torch.cat([clean, masked]))
    want = ref(clean)
    assert torch.allclose(out[:2], want, atol=1e-5)
    assert torch.allclose(bn.running_mean, ref.running_mean) and torch.allclose(bn.running_var, ref.running_var)
    assert torch.allclose(out[2:], torch.zeros_like(out[2:]), atol=1e-5)  # normalised by its own statistics
    assert bn.split is None  # restored after the block
    joint = torch.nn.BatchNorm3d(3).train()
    joint(torch.cat([clean, masked]))
    assert not torch.allclose(joint.running_mean, ref.running_mean)  # what 'joint' passes would do


def test_micd_separate_passes_leave_running_stats_to_clean_inputs():
    import copy

    net = NetworkConfig(out_channels=3, filters=4, dropout=0.0)
    x_l, y_l, x_u = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16)), torch.randn(2, 1, 16, 16, 16)
    first_bn = lambda s: [b for b in s.modules() if isinstance(b, torch.nn.BatchNorm3d)][0]
    got = {}
    for passes in ("separate", "joint"):
        torch.manual_seed(0)
        m = build_method("micd", net, 3, MethodConfig(bn_passes=passes, mask_ratio=0.9, pseudo_labels="no_dropout"))
        before = copy.deepcopy(m.students["student_a"]).train()
        m.step(x_l, y_l, x_u, 0.1, torch.Generator().manual_seed(0))
        got[passes] = first_bn(m.students["student_a"]).running_mean
    # What the clean inputs alone do to the running statistics: the clean labeled training forward, then the
    # dropout-off pseudo-label pass on the clean batch.
    with torch.no_grad():
        before(x_l)
        before(torch.cat([x_l, x_u]), turnoff_drop=True)
    assert torch.allclose(got["separate"], first_bn(before).running_mean, atol=1e-6)
    assert not torch.allclose(got["joint"], first_bn(before).running_mean, atol=1e-4)


@pytest.mark.parametrize("method", ["mean-teacher", "cps", "dhc"])
def test_peers_separate_passes_keep_unlabeled_inputs_out_of_running_statistics(method):
    """bn_passes=separate for the peers: the running statistics a step leaves are the same whatever the unlabeled
    patches are (they come from the labeled ones, as in supervised training); joint (their default) mixes them in."""
    net = NetworkConfig(out_channels=3, filters=4, dropout=0.0)
    x_l, y_l = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16))
    unlabeled = [torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16) * 3.0 + 2.0]
    for passes in ("separate", "joint"):
        stats = []
        for x_u in unlabeled:
            torch.manual_seed(0)
            m = build_method(method, net, 3, MethodConfig(bn_passes=passes))
            m.step(x_l, y_l, x_u, 0.1, torch.Generator().manual_seed(0))
            bns = [b for b in m.students["student_a"].modules() if isinstance(b, torch.nn.BatchNorm3d)]
            stats.append(torch.cat([torch.cat([b.running_mean, b.running_var]) for b in bns]))
        same = torch.allclose(stats[0], stats[1], atol=1e-6)
        assert same if passes == "separate" else not same, passes


def test_pseudo_labels_sources_and_threshold():
    torch.manual_seed(0)
    net = NetworkConfig(out_channels=3, filters=4, dropout=0.5, normalization="none")
    x = torch.randn(2, 1, 16, 16, 16)
    m = build_method("cps", net, 3, MethodConfig(pseudo_labels="no_dropout"))
    z_train, _ = m.students["student_a"](x)  # dropout on
    p = m.pseudo_logits("student_a", x, z_train)
    with torch.no_grad():
        clean = m.students["student_a"](x, turnoff_drop=True)[0]
    assert torch.equal(p, clean) and not torch.equal(p, z_train.detach())
    assert torch.equal(build_method("cps", net, 3, MethodConfig()).pseudo_logits("student_a", x, z_train),
                       z_train.detach())
    with pytest.raises(ValueError, match="no EMA teachers"):
        build_method("cps", net, 3, MethodConfig(pseudo_labels="teacher")).pseudo_logits("student_a", x, None)
    t = build_method("micd", net, 3, MethodConfig(pseudo_labels="teacher"))
    with torch.no_grad():
        assert torch.equal(t.pseudo_logits("student_b", x, None), t.teachers["teacher_b"](x, turnoff_drop=True)[0])
    logits = torch.tensor([[[4.0, 0.0]], [[0.0, 0.2]]])[None].permute(0, 1, 3, 2)  # (1, 2 classes, 2 voxels, 1)
    lab = hard_pseudo_labels(logits, 0.9)
    assert lab.reshape(-1).tolist() == [0, IGNORE]  # confident voxel kept, the 0.55 one ignored
    target = lab.clone()
    ce = weighted_ce(logits, target)
    assert ce.item() == pytest.approx(F.cross_entropy(logits[:, :, :1], target[:, :1]).item(), rel=1e-6)
    assert weighted_ce(logits, torch.full_like(target, IGNORE)).item() == 0.0


def test_supervised_warmup_then_ramp():
    assert consistency_weight(0, 1000, 0.1, 1.0, 0.2) == 0.0
    assert consistency_weight(199, 1000, 0.1, 1.0, 0.2) == 0.0
    assert consistency_weight(200, 1000, 0.1, 1.0, 0.2) == pytest.approx(0.1 * np.exp(-5.0))
    assert consistency_weight(1000, 1000, 0.1, 1.0, 0.2) == pytest.approx(0.1)
    assert consistency_weight(500, 1000, 0.1, 1.0) == pytest.approx(gaussian_rampup(500, 1000, 0.1))


@pytest.mark.parametrize("name", ["micd", "dhc"])
def test_warmup_step_is_the_supervised_methods_step(name):
    """--warmup-step supervised: a co-training method's warm-up step is the supervised method's step on the same
    students and class weights (no unlabeled or masked pass); its `sup` is that step's sup_a + sup_b."""
    torch.manual_seed(0)
    x_l, y_l = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16))
    m = build_method(name, _det_net(), 3, MethodConfig(class_weights="dhc-bgfloor"))
    sup = build_method("supervised", _det_net(), 3, MethodConfig(class_weights="dhc-bgfloor"))
    sup.students.load_state_dict(m.students.state_dict())
    for method in (m, sup):
        method.init_from_label_counts(np.array([1000.0, 50.0, 10.0]))
    assert m.has_supervised_step and not sup.has_supervised_step
    terms = m.supervised_step(x_l, y_l)
    ref = sup.step(x_l, y_l, None, 0.0, torch.Generator().manual_seed(0))
    assert set(terms) == {"sup", "total"}
    assert terms["sup"].item() == pytest.approx((ref["sup_a"] + ref["sup_b"]).item(), rel=1e-6)
    assert m.current_weights == sup.current_weights
    with pytest.raises(NotImplementedError):
        build_method("cps", _det_net(), 3, MethodConfig()).supervised_step(x_l, y_l)


def test_supervised_class_weights_are_dhcs_from_labeled_patches_only():
    """--class-weights for supervised: the weights MICD uses, with DistDW counting student B's labeled predictions."""
    torch.manual_seed(0)
    x_l, y_l = torch.randn(2, 1, 16, 16, 16), torch.randint(0, 3, (2, 16, 16, 16))
    plain = build_method("supervised", _det_net(), 3, MethodConfig(class_weights="none"))
    assert plain.current_weights is None and "diffdw" not in plain.extra_state()
    assert build_method("supervised", _det_net(), 3, MethodConfig()).option("class_weights") == "dhc-bgfloor"
    m = build_method("supervised", _det_net(), 3, MethodConfig(class_weights="dhc-bgfloor"))
    m.load_state_dict(plain.state_dict())
    m.init_from_label_counts(np.array([1000.0, 50.0, 10.0]))
    terms = m.step(x_l, y_l, None, 0.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        za, zb = m.students["student_a"](x_l)[0], m.students["student_b"](x_l)[0]
    ref = DiffDW(3), DistDW(3)
    ref[1].init_from_counts(np.array([1000.0, 50.0, 10.0]))
    w_a, w_b = floor_background(ref[0].update(za, y_l)), floor_background(ref[1].update(zb))
    assert not torch.allclose(w_a, w_a[0])  # the weights differ by class, so weighting shows in the loss
    assert terms["sup_a"].item() == pytest.approx(dice_ce(za, y_l, w_a).item(), rel=1e-5)
    assert terms["sup_b"].item() == pytest.approx(dice_ce(zb, y_l, w_b).item(), rel=1e-5)
    unweighted = plain.step(x_l, y_l, None, 0.0, torch.Generator().manual_seed(0))
    assert terms["sup_a"].item() != pytest.approx(unweighted["sup_a"].item(), rel=1e-3)
    # the statistics travel with a checkpoint, so a resumed run keeps weighting as it did
    again = build_method("supervised", _det_net(), 3, MethodConfig(class_weights="dhc-bgfloor"))
    again.load_extra_state(m.extra_state())
    assert again.current_weights == m.current_weights == {"w_diff": ref[0].weights.tolist(),
                                                          "w_dist": ref[1].weights.tolist()}

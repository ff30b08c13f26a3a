"""Each MICD loss term is what the spec (docs: micd-method.md) and the option's help say, recomputed here from the
students' and teachers' own outputs: --mcpc-mode, --keep-clean-cps, --cfc-distance, --cfc-weights, --cmd-weighted,
--term-weights. Networks without normalisation or dropout, so a sample's output does not depend on its batch and
the step's forward passes can be repeated one by one."""

import pytest
import torch
import torch.nn.functional as F

from micd.methods import MethodConfig, build_method
from micd.nets import NetworkConfig

torch.set_num_threads(1)

N_L, N_U, SHAPE, BETA = 2, 2, (16, 16, 16), 0.3


def _method(**options):
    torch.manual_seed(0)
    m = build_method("micd", NetworkConfig(out_channels=3, filters=4, dropout=0.0, normalization="none"), 3,
                     MethodConfig(**options))
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # teachers unlike the students, so that pseudo-label sources can be told apart
        for p in m.teachers.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    weights = []
    record = m.class_weights
    m.class_weights = lambda *a: weights.append(record(*a)) or weights[-1]  # the weights the step used
    return m, weights


def _inputs():
    g = torch.Generator().manual_seed(7)
    x = torch.rand((N_L + N_U, 1, *SHAPE), generator=g) + 0.5
    y = (x[:N_L, 0] > 1.0).long() + (x[:N_L, 0] > 1.3).long()
    return x, y


def _step(**options):
    m, weights = _method(**options)
    x, y = _inputs()
    terms = m.step(x[:N_L], y, x[N_L:], BETA, torch.Generator().manual_seed(3))
    # the same passes, one by one: masked inputs from the same generator state, then each network on its own
    xm_a, xm_b = m.make_masked(x, N_L, torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = {"x": x, "y": y, "w": weights[-1]}
        for s, xm in (("a", xm_a), ("b", xm_b)):
            out[f"z{s}_c"], out[f"f{s}_c"] = m.students[f"student_{s}"](x)
            out[f"z{s}_m"], out[f"f{s}_m"] = m.students[f"student_{s}"](xm)
            out[f"t{s}"] = m.teachers[f"teacher_{s}"](x)[0]
    return {k: v.detach() for k, v in terms.items()}, out


def ce(logits, target_logits, weight=None):
    """Cross-entropy against the argmax of `target_logits`, weighted per class and normalised by the summed weights."""
    return F.cross_entropy(logits, target_logits.argmax(1), weight=weight)


def kl(a, b):
    """KL(softmax(a) || softmax(b)) over the channels, averaged over samples and voxels."""
    pa, pb = torch.softmax(a, 1), torch.softmax(b, 1)
    return (pa * (pa.log() - pb.log())).sum(1).mean()


def test_mcpc_modes_pair_masked_and_clean_predictions_as_named():
    """masked_from_clean: each student's masked prediction learns the other branch's clean pseudo-label (the
    teachers' by default); clean_from_masked: the clean prediction learns the other's masked one;
    masked_from_masked: masked from masked. Class weights: DiffDW for A, DistDW for B."""
    expected = {
        "masked_from_clean": lambda o, wa, wb: ce(o["za_m"], o["tb"], wa) + ce(o["zb_m"], o["ta"], wb),
        "clean_from_masked": lambda o, wa, wb: ce(o["za_c"], o["zb_m"], wa) + ce(o["zb_c"], o["za_m"], wb),
        "masked_from_masked": lambda o, wa, wb: ce(o["za_m"], o["zb_m"], wa) + ce(o["zb_m"], o["za_m"], wb),
    }
    values = {}
    for mode, formula in expected.items():
        terms, o = _step(mcpc_mode=mode)
        wa, wb = o["w"]
        assert wa is not None and not torch.equal(wa, wb)  # MICD's default weights are on, and differ per branch
        values[mode] = terms["mcpc"].item()
        assert values[mode] == pytest.approx(formula(o, wa, wb).item(), rel=1e-4), mode
    assert len({round(v, 5) for v in values.values()}) == 3


def test_pseudo_labels_option_names_the_source_of_mcpc_targets():
    """--pseudo-labels no_dropout takes MCPC's clean targets from the students themselves, not the teachers."""
    terms, o = _step(pseudo_labels="no_dropout")
    wa, wb = o["w"]
    assert terms["mcpc"].item() == pytest.approx((ce(o["za_m"], o["zb_c"], wa) + ce(o["zb_m"], o["za_c"], wb)).item(),
                                                 rel=1e-4)


def test_keep_clean_cps_adds_dhcs_clean_cross_supervision():
    plain, _ = _step()
    terms, o = _step(keep_clean_cps=True)
    wa, wb = o["w"]
    added = ce(o["za_c"], o["tb"], wa) + ce(o["zb_c"], o["ta"], wb)
    assert added.item() > 0
    assert terms["mcpc"].item() == pytest.approx(plain["mcpc"].item() + added.item(), rel=1e-4)


@pytest.mark.parametrize("distance", ["kl_sym", "kl", "mse"])
def test_cfc_is_the_weighted_distance_of_the_four_decoder_stages(distance):
    """CFC = sum_i lambda_i D(F_A,i, F_B,i) over the decoder stages of the masked inputs, coarse to full resolution,
    with D the named distance: symmetric KL of the channel softmax, KL(A||B), or the MSE of the raw features."""
    lam = (0.1, 0.0, 0.5, 2.0)
    terms, o = _step(cfc_distance=distance, cfc_weights=lam)
    fa, fb = o["fa_m"], o["fb_m"]
    sizes = [f.shape[2:].numel() for f in fa]
    assert len(fa) == 4 and sizes == sorted(sizes) and sizes[-1] == torch.Size(SHAPE).numel()
    dist = {"kl_sym": lambda a, b: 0.5 * (kl(a, b) + kl(b, a)), "kl": kl,
            "mse": lambda a, b: ((a - b) ** 2).mean()}[distance]
    expected = sum(w * dist(a, b) for w, a, b in zip(lam, fa, fb))
    assert terms["cfc"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_cmd_weighted_applies_the_class_weights_to_cmd_too():
    """CMD: each student's masked prediction learns its own EMA teacher's clean pseudo-label; --cmd-weighted weighs
    it with the branch's class weights as MCPC is, without it the CE is unweighted."""
    for weighted in (False, True):
        terms, o = _step(cmd_weighted=weighted)
        wa, wb = o["w"] if weighted else (None, None)
        expected = ce(o["za_m"], o["ta"], wa) + ce(o["zb_m"], o["tb"], wb)
        assert terms["cmd"].item() == pytest.approx(expected.item(), rel=1e-4), weighted
    assert _step(cmd_weighted=True)[0]["cmd"].item() != pytest.approx(_step()[0]["cmd"].item(), rel=1e-3)


def test_term_weights_scale_each_regulariser_in_the_total():
    """Eq. 7 with --term-weights k1 k2 k3: total = sup + beta (k1 MCPC + k2 CFC + k3 CMD); the terms themselves do
    not change, except that a term weighted 0 is not computed (reported as 0), so an ablation's step is cheaper at
    equal time."""
    base, _ = _step()
    terms, _ = _step(term_weights=(1.0, 0.5, 0.0))
    for k in ("sup", "mcpc", "cfc"):
        assert terms[k].item() == pytest.approx(base[k].item(), rel=1e-5)
    assert terms["cmd"].item() == 0 and base["cmd"].item() > 0
    no_cfc, _ = _step(term_weights=(0.0, 0.0, 1.0))
    assert no_cfc["mcpc"].item() == 0 and no_cfc["cfc"].item() == 0
    assert no_cfc["cmd"].item() == pytest.approx(base["cmd"].item(), rel=1e-5)
    expected = terms["sup"] + BETA * (terms["mcpc"] + 0.5 * terms["cfc"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert base["total"].item() == pytest.approx(
        (base["sup"] + BETA * (base["mcpc"] + base["cfc"] + base["cmd"])).item(), rel=1e-5)


def test_pseudo_threshold_leaves_unsure_voxels_out_of_mcpc():
    """--pseudo-threshold t: voxels whose pseudo-label source is less sure than t (softmax maximum) add nothing to
    MCPC; the rest are averaged as before (torch's ignore_index)."""
    t = 0.4
    terms, o = _step(pseudo_threshold=t)
    wa, wb = o["w"]

    def ce_sure(logits, source, weight):
        conf, lab = torch.softmax(source, 1).max(1)
        target = torch.where(conf >= t, lab, torch.full_like(lab, -100))
        assert 0 < int((target == -100).sum()) < target.numel()  # the threshold bites, but not everywhere
        return F.cross_entropy(logits, target, weight=weight, ignore_index=-100)

    expected = ce_sure(o["za_m"], o["tb"], wa) + ce_sure(o["zb_m"], o["ta"], wb)
    assert terms["mcpc"].item() == pytest.approx(expected.item(), rel=1e-4)


def test_ema_alpha_is_the_teachers_decay():
    """--ema-alpha a: after warm-up each optimizer step moves a teacher to a * teacher + (1 - a) * student."""
    m, _ = _method(ema_alpha=0.9)
    m.optimizer_steps = 1000  # past the warm-up min(1 - 1/(t+1), a)
    before = {k: v.clone() for k, v in m.teachers["teacher_a"].state_dict().items()}
    student = m.students["student_a"].state_dict()
    m.after_step()
    after = m.teachers["teacher_a"].state_dict()
    for k, v in after.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * student[k], atol=1e-6), k


def test_each_teacher_runs_once_per_step():
    """Pseudo-labels and CMD's targets both come from the teachers on the clean batch: one pass each (it was two, an
    eighth of the step's GFLOP repeated, issue 32); CMD still equals the recomputed term (test above)."""
    m, _ = _method()
    calls = {"teacher_a": 0, "teacher_b": 0}
    for name, teacher in m.teachers.items():
        teacher.register_forward_hook(lambda *_a, name=name: calls.__setitem__(name, calls[name] + 1))
    x, y = _inputs()
    m.step(x[:N_L], y, x[N_L:], BETA, torch.Generator().manual_seed(3))
    assert calls == {"teacher_a": 1, "teacher_b": 1}

"""The MICD method options change the step the way their names say: which inputs are masked, with what, in which
blocks, whether the two students share a mask, and which teacher CMD learns from."""

import pytest
import torch

from micd.methods import MethodConfig, build_method
from micd.nets import NetworkConfig

torch.set_num_threads(1)

N_L, N_U, SHAPE = 2, 2, (16, 16, 16)


def micd(**options):
    torch.manual_seed(0)
    return build_method("micd", NetworkConfig(out_channels=3, filters=4), 3, MethodConfig(**options))


def batch():
    g = torch.Generator().manual_seed(7)
    x = torch.rand((N_L + N_U, 1, *SHAPE), generator=g) + 0.5  # every voxel in (0.5, 1.5): no value is 0 or the min
    x[:, :, 0, 0, 0] = 0.25  # each sample's minimum, known
    return x


def masked(**options):
    x = batch()
    xa, xb = micd(**options).make_masked(x, N_L, torch.Generator().manual_seed(3))
    return x, xa, xb


def dropped(x, xm):
    return xm != x  # the voxels the mask replaced (no fill value occurs in x, except the one minimum voxel)


def test_mask_shared_is_one_mask_for_both_students_and_no_mask_shared_two():
    x, xa, xb = masked(mask_shared=True)
    assert xa is xb or torch.equal(xa, xb)
    x, xa, xb = masked(mask_shared=False)
    assert dropped(x, xa).any() and dropped(x, xb).any() and not torch.equal(dropped(x, xa), dropped(x, xb))


@pytest.mark.parametrize("mask_labeled", [True, False])
def test_mask_labeled_decides_whether_labeled_inputs_are_masked(mask_labeled):
    x, xa, xb = masked(mask_labeled=mask_labeled, mask_shared=False)
    for xm in (xa, xb):
        assert dropped(x[N_L:], xm[N_L:]).any()  # unlabeled inputs are always masked
        assert bool(dropped(x[:N_L], xm[:N_L]).any()) is mask_labeled


@pytest.mark.parametrize("fill,value", [("zero", 0.0), ("min", 0.25)])
def test_mask_fill_is_the_value_of_dropped_voxels_and_the_rest_is_untouched(fill, value):
    x, xa, _ = masked(mask_fill=fill, mask_ratio=0.5, mask_block=4)
    gone = dropped(x, xa)
    assert gone.any()
    assert torch.all(xa[gone] == value)
    assert torch.equal(xa[~gone], x[~gone])


@pytest.mark.parametrize("ratio", [0.2, 0.7])
def test_mask_ratio_and_block_shape_the_dropped_region(ratio):
    x, xa, _ = masked(mask_ratio=ratio, mask_block=4, mask_fill="zero")
    keep = (xa != 0).float()
    keep[:, :, 0, 0, 0] = keep[:, :, 0, 1, 0]  # the minimum voxel is kept like its block
    # constant on every aligned 4x4x4 block: the mask is drawn per block of --mask-block voxels
    blocks = keep.reshape(N_L + N_U, 1, 4, 4, 4, 4, 4, 4)
    assert torch.all(blocks.amin(dim=(3, 5, 7)) == blocks.amax(dim=(3, 5, 7)))
    # the dropped share is about --mask-ratio (256 blocks: binomial sd about 0.03)
    assert abs((1 - keep.mean().item()) - ratio) < 0.1


def _cmd(cmd_mode, swap_teachers):
    m = micd(cmd_mode=cmd_mode)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():  # teachers that differ from the students and from each other
        for p in list(m.teachers["teacher_a"].parameters()) + list(m.teachers["teacher_b"].parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
        if swap_teachers:
            a, b = ({k: v.clone() for k, v in m.teachers[t].state_dict().items()} for t in ("teacher_a", "teacher_b"))
            m.teachers["teacher_a"].load_state_dict(b)
            m.teachers["teacher_b"].load_state_dict(a)
    x = batch()
    y = (x[:N_L, 0] > 1.0).long() + (x[:N_L, 0] > 1.3).long()
    torch.manual_seed(5)  # dropout of the training passes
    return m.step(x[:N_L], y, x[N_L:], 0.1, torch.Generator().manual_seed(3))["cmd"].item()


def test_cmd_mode_names_the_teacher_each_student_learns_from():
    """cross_teacher makes student A learn from teacher B and B from A: exactly own_teacher with the teachers'
    weights swapped; and it is not own_teacher."""
    own, cross, own_swapped = _cmd("own_teacher", False), _cmd("cross_teacher", False), _cmd("own_teacher", True)
    assert cross == pytest.approx(own_swapped, rel=1e-5)
    assert abs(cross - own) > 1e-3 * abs(own)


@pytest.mark.parametrize("init_a,init_b", [("xavier", "kaiming"), ("kaiming", "xavier")])
def test_init_options_set_each_students_weight_scale(init_a, init_b):
    """--init-a/--init-b: the conv weights of each student have the spread of the named initialisation
    (Kaiming normal: sqrt(2 / fan_in); Xavier normal: sqrt(2 / (fan_in + fan_out)))."""
    m = micd(init_a=init_a, init_b=init_b)
    for key, scheme in (("student_a", init_a), ("student_b", init_b)):
        convs = [c for c in m.students[key].modules() if isinstance(c, torch.nn.Conv3d) and c.weight.numel() > 2000]
        assert convs
        for conv in convs:
            out_c, in_c, *k = conv.weight.shape
            fan_in, fan_out = in_c * k[0] * k[1] * k[2], out_c * k[0] * k[1] * k[2]
            expected = (2 / fan_in) ** 0.5 if scheme == "kaiming" else (2 / (fan_in + fan_out)) ** 0.5
            other = (2 / (fan_in + fan_out)) ** 0.5 if scheme == "kaiming" else (2 / fan_in) ** 0.5
            std = conv.weight.std().item()
            assert abs(std - expected) < 0.15 * expected and abs(std - other) > 0.2 * other, (key, conv, std)


def _cfc(cfc_inputs, mask_ratio):
    torch.manual_seed(0)
    m = build_method("micd", NetworkConfig(out_channels=3, filters=4, dropout=0.0, normalization="none"), 3,
                     MethodConfig(cfc_inputs=cfc_inputs, mask_ratio=mask_ratio, bn_passes="joint"))
    x = batch()
    y = (x[:N_L, 0] > 1.0).long()
    return m.step(x[:N_L], y, x[N_L:], 0.1, torch.Generator().manual_seed(3))["cfc"].item()


def test_cfc_inputs_names_the_inputs_whose_features_are_compared():
    """With nothing masked (--mask-ratio 0) masked and clean inputs are the same, so CFC is the same either way
    (no normalisation layers and no dropout: a sample's features do not depend on the rest of the batch);
    with masking, --cfc-inputs masked and clean compare different features."""
    assert _cfc("masked", 0.0) == pytest.approx(_cfc("clean", 0.0), rel=1e-5)
    assert abs(_cfc("masked", 0.5) - _cfc("clean", 0.5)) > 1e-3 * abs(_cfc("clean", 0.5))
    assert _cfc("clean", 0.5) == pytest.approx(_cfc("clean", 0.0), rel=1e-5)  # clean features: the mask plays no part

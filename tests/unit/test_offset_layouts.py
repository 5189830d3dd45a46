"""Offset-layout converters: round trips, the layouts as their sources define them, and a
swapped (dy, dx) order failing the operator standard."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from pytest_blendmask.ops.offset_layouts import from_dcnv3, from_npu, to_dcnv3, to_npu
from pytest_blendmask.precision.op_standards import absolute_threshold
from pytest_blendmask.precision.thresholds import load_thresholds

from .dcnv3_reference import dcnv3_core

FP32 = load_thresholds().operator["fp32"]
N, C, H, W = 2, 8, 9, 10


def offsets(groups, kh, kw, out_h=H, out_w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    offset = 2.5 * torch.randn(N, 2 * groups * kh * kw, out_h, out_w, generator=g, dtype=torch.float64)
    mask = torch.rand(N, groups * kh * kw, out_h, out_w, generator=g, dtype=torch.float64)
    return offset, mask


def features(seed=1):
    return torch.randn(N, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("groups, kernel", [(1, (3, 3)), (2, (3, 3)), (2, (3, 2))])
def test_round_trips(groups, kernel):
    offset, mask = offsets(groups, *kernel)
    back = from_dcnv3(*to_dcnv3(offset, mask, kernel), kernel)
    assert torch.equal(back[0], offset) and torch.equal(back[1], mask)
    back = from_npu(to_npu(offset, mask))
    assert torch.equal(back[0], offset) and torch.equal(back[1], mask)


@pytest.mark.parametrize("groups, kernel", [(1, (3, 3)), (2, (3, 3)), (4, (3, 2))])
def test_dcnv3_layout_runs_seed_003s_core_to_torchvisions_result(groups, kernel):
    """DCNv3's core is deform_conv2d with a ones kernel, one group per channel."""
    kh, kw = kernel
    x, (offset, mask) = features(), offsets(groups, kh, kw, H, W - (kw - 1) + 2)
    expected = deform_conv2d(x, offset, torch.ones(C, 1, kh, kw, dtype=torch.float64), padding=1, mask=mask)
    got = dcnv3_core(x.permute(0, 2, 3, 1), *to_dcnv3(offset, mask, kernel), kernel, 1, 1, 1, groups)
    assert expected.abs().max() > 1
    torch.testing.assert_close(got, expected.permute(0, 2, 3, 1), rtol=0, atol=1e-9)


def test_dcnv3_pairs_read_as_seed_003s_prose_says_fail_the_standard():
    """The seed's prose puts (h, w) in each pair; its code reads (x, y). Following the prose is wrong."""
    x, (offset, mask) = features(), offsets(2, 3, 3)
    ones = torch.ones(C, 1, 3, 3, dtype=torch.float64)
    expected = deform_conv2d(x, offset, ones, padding=1, mask=mask).permute(0, 2, 3, 1)
    dcn_offset, dcn_mask = to_dcnv3(offset, mask, (3, 3))
    prose = dcn_offset.reshape(N, H, W, -1, 2).flip(-1).reshape(N, H, W, -1)
    got = dcnv3_core(x.permute(0, 2, 3, 1), prose, dcn_mask, (3, 3), 1, 1, 1, 2)
    assert not absolute_threshold(got, expected, FP32).passed


def test_npu_layout_is_all_x_then_all_y_then_the_mask():
    groups, kh, kw = 2, 3, 3
    offset, mask = offsets(groups, kh, kw)
    packed = to_npu(offset, mask)
    points = groups * kh * kw
    assert packed.shape == (N, H, W, 3 * points)
    for g in range(groups):
        for k in range(kh * kw):
            torchvision_channel = g * 2 * kh * kw + 2 * k  # dy; dx is the next channel
            assert torch.equal(packed[..., g * kh * kw + k], offset[:, torchvision_channel + 1])
            assert torch.equal(packed[..., points + g * kh * kw + k], offset[:, torchvision_channel])
            assert torch.equal(packed[..., 2 * points + g * kh * kw + k], mask[:, g * kh * kw + k])


def test_npu_layout_fed_back_gives_torchvisions_result_and_swapped_it_fails():
    x, (offset, mask) = features(), offsets(1, 3, 3)
    weight = torch.randn(4, C, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = deform_conv2d(x, offset, weight, padding=1, mask=mask)
    packed = to_npu(offset, mask)
    back_offset, back_mask = from_npu(packed)
    assert absolute_threshold(deform_conv2d(x, back_offset, weight, padding=1, mask=back_mask), expected, FP32).passed
    # Reading the packed block as (y, x) -- torchvision's pair order -- swaps every offset.
    dx, dy, packed_mask = packed.permute(0, 3, 1, 2).chunk(3, dim=1)
    swapped = torch.stack((dx, dy), dim=2).reshape(N, -1, H, W)
    verdict = absolute_threshold(deform_conv2d(x, swapped, weight, padding=1, mask=packed_mask), expected, FP32)
    assert not verdict.passed and verdict.value > 1e3


def test_converters_refuse_mismatched_shapes():
    offset, mask = offsets(1, 3, 3)
    with pytest.raises(ValueError, match=r"expected offset \[N, 2\*G\*K, Ho, Wo\] and mask \[N, G\*K, Ho, Wo\]"):
        to_npu(offset[:, :16], mask)
    with pytest.raises(ValueError, match=r"expected a packed offset \[N, Ho, Wo, 3\*G\*K\]"):
        from_npu(torch.zeros(N, H, W, 26))
    with pytest.raises(ValueError, match=r"expected DCNv3 offset \[N, Ho, Wo, G\*K\*2\]"):
        from_dcnv3(torch.zeros(N, H, W, 17), torch.zeros(N, H, W, 9), (3, 3))

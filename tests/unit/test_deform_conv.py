"""The pure-PyTorch deformable convolution against torchvision's, its selection, and the model hook."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from pytest_blendmask.model import build_model
from pytest_blendmask.model.backbone import ModulatedDeformConvNorm
from pytest_blendmask.ops.deform_conv import deform_conv2d
from pytest_blendmask.ops.selection import kernel_problem, select_deform_conv, use_deform_conv
from pytest_blendmask.precision.op_standards import absolute_threshold
from pytest_blendmask.precision.thresholds import load_thresholds
from pytest_blendmask.targets import LoadContext, parse_target

FP32 = load_thresholds().operator["fp32"]


def _inputs(channels, out_channels, offset_groups, groups, kernel, stride, padding, dilation, modulated, dtype, seed=0):
    """Random input, weight and offsets of a few pixels (many points fall between pixels and off the map)."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    x = torch.randn(2, channels, 9, 11, generator=g, dtype=dtype)
    out_h = (9 + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    out_w = (11 + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    offset = 3 * torch.randn(2, 2 * offset_groups * kh * kw, out_h, out_w, generator=g, dtype=dtype)
    mask = torch.rand(2, offset_groups * kh * kw, out_h, out_w, generator=g, dtype=dtype) if modulated else None
    weight = torch.randn(out_channels, channels // groups, kh, kw, generator=g, dtype=dtype)
    bias = torch.randn(out_channels, generator=g, dtype=dtype)
    return dict(input=x, offset=offset, weight=weight, bias=bias, stride=stride, padding=padding, dilation=dilation,
                mask=mask)


CONFIGS = [
    pytest.param(8, 6, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), True, id="dcnv2-3x3-as-in-dcni3"),
    pytest.param(8, 4, 1, 1, (3, 3), (2, 2), (1, 1), (2, 2), False, id="dcnv1-stride2-dilation2"),
    pytest.param(8, 6, 2, 2, (3, 3), (1, 1), (1, 1), (1, 1), True, id="offset-groups-and-groups"),
    pytest.param(6, 6, 3, 6, (3, 2), (2, 1), (1, 0), (1, 2), True, id="depthwise-non-square-anisotropic"),
    pytest.param(4, 4, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), True, id="1x1"),
]


@pytest.mark.parametrize("channels, out_channels, offset_groups, groups, kernel, stride, padding, dilation, modulated", CONFIGS)
def test_fallback_is_torchvisions_operator_in_float64(channels, out_channels, offset_groups, groups, kernel, stride,
                                                      padding, dilation, modulated):
    inputs = _inputs(channels, out_channels, offset_groups, groups, kernel, stride, padding, dilation, modulated,
                     torch.float64)
    expected = torchvision_deform_conv2d(**inputs)
    assert expected.abs().max() > 1
    torch.testing.assert_close(deform_conv2d(**inputs), expected, rtol=0, atol=1e-12)


def test_fallback_in_float32_meets_the_fp32_standard_against_float64():
    inputs = _inputs(8, 6, 2, 2, (3, 3), (1, 1), (1, 1), (1, 1), True, torch.float32)
    wide = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    magnitude = torchvision_deform_conv2d(**{**wide, "input": wide["input"].abs(), "weight": wide["weight"].abs(),
                                             "bias": wide["bias"].abs()})
    verdict = absolute_threshold(deform_conv2d(**inputs), torchvision_deform_conv2d(**wide), FP32, magnitude)
    assert verdict.passed, verdict.detail
    # The same check sees an offset a hundredth of a pixel off.
    moved = deform_conv2d(**{**inputs, "offset": inputs["offset"] + 0.01})
    assert not absolute_threshold(moved, torchvision_deform_conv2d(**wide), FP32, magnitude).passed


def test_half_inputs_are_computed_in_float32_and_returned_in_their_dtype():
    inputs = _inputs(8, 6, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), True, torch.float32)
    half = {k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(**half)
    expected = deform_conv2d(**{k: v.float() if isinstance(v, torch.Tensor) else v for k, v in half.items()})
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.to(torch.bfloat16), rtol=0, atol=0)


def test_a_bad_offset_shape_names_the_expected_one():
    inputs = _inputs(8, 6, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), True, torch.float32)
    with pytest.raises(ValueError, match=r"expected offset \[N, 2\*G\*kh\*kw, Ho, Wo\] = \[2, 2\*G\*9, 9, 11\], got \(2, 18, 9, 10\)"):
        deform_conv2d(**{**inputs, "offset": inputs["offset"][..., :10]})


def test_kernel_problem_finds_what_the_cpu_kernel_lacks():
    assert kernel_problem("cpu", "fp32") is None
    assert "0.0125 px off (it computes positions in fp16)" in kernel_problem("cpu", "fp16")
    assert kernel_problem("cpu", "bf16").startswith("torchvision has no cpu deform_conv2d kernel for bf16")


@pytest.mark.parametrize("dtype, name", [("fp32", "torchvision"), ("fp16", "fallback"), ("bf16", "fallback")])
def test_selection_falls_back_where_the_kernel_has_a_problem(dtype, name):
    choice = select_deform_conv("cpu", dtype)
    assert choice.name == name
    assert choice.op is (torchvision_deform_conv2d if name == "torchvision" else deform_conv2d)


@pytest.fixture(scope="module")
def dcni3():
    """R_101_dcni3 with seeded non-zero offset convs (the released init has them at zero)."""
    model = build_model("R_101_dcni3")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "conv2_offset", None) is not None:
                module.conv2_offset.weight.normal_(0, 0.1, generator=generator)
    return model


def test_use_deform_conv_switches_every_deformable_layer_of_r101_dcni3(dcni3):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = dcni3.backbone.bottom_up(x)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1])
        return deform_conv2d(*args, **kwargs)

    try:
        # dcni3: res3 blocks 0, 3; res4 blocks 0, 3, ..., 21; res5 block 0.
        assert use_deform_conv(dcni3, spy) == 11
        with torch.inference_mode():
            got = dcni3.backbone.bottom_up(x)
    finally:
        use_deform_conv(dcni3, ModulatedDeformConvNorm.deform_conv)
    assert len(calls) == 11 and all(offset.abs().max() > 0.1 for offset in calls)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_use_deform_conv_on_a_model_without_deformable_layers_switches_nothing():
    assert use_deform_conv(build_model("lite"), deform_conv2d) == 0


@pytest.mark.parametrize(("spec", "mode", "name"), [("cpu", "auto", "torchvision"), ("cpu:fp16", "auto", "fallback"),
                                                    ("cpu", "fallback", "fallback"), ("cpu:bf16", "torchvision", "torchvision")])
def test_an_eager_target_loads_its_deformable_layers_with_the_chosen_implementation(dcni3, spec, mode, name):
    runner = parse_target(spec).load(dcni3, LoadContext((64, 64), deform_conv=mode))
    assert runner.deform_conv.name == name
    expected = torchvision_deform_conv2d if name == "torchvision" else deform_conv2d
    layers = [m for m in runner.model.modules() if isinstance(m, ModulatedDeformConvNorm)]
    assert len(layers) == 11 and all(layer.deform_conv is expected for layer in layers)
    assert all(m.deform_conv is ModulatedDeformConvNorm.deform_conv  # the session's reference keeps torchvision's
               for m in dcni3.modules() if isinstance(m, ModulatedDeformConvNorm))
    if mode != "auto":
        assert runner.deform_conv.reason == f"forced by deform-conv mode {mode!r}"


def test_a_model_without_deformable_layers_loads_no_choice():
    assert parse_target("cpu:fp16").load(build_model("lite"), LoadContext((64, 64))).deform_conv is None

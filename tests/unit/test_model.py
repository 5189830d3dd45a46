"""BlendMask layout, shapes, determinism, DCN and checkpoint loading."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_blendmask.model import CONFIG_NAMES, NORMS, WeightsError, build_model, get_config, load_weights
from pytest_blendmask.model.backbone import Bottleneck

from .golden import load_golden

SMALL_INPUT = (64, 96)


def raw_shapes(name: str, norm: str | None, height: int, width: int) -> dict[str, tuple[int, ...]]:
    cfg = get_config(name, norm)
    shapes = {"bases": (1, cfg.num_bases, height // 4, width // 4)}
    for level, stride in zip(cfg.fpn_levels, cfg.fpn_strides):
        h, w = -(-height // stride), -(-width // stride)
        shapes[f"logits_p{level}"] = (1, cfg.num_classes, h, w)
        shapes[f"bbox_reg_p{level}"] = (1, 4, h, w)
        shapes[f"ctrness_p{level}"] = (1, 1, h, w)
        shapes[f"top_feats_p{level}"] = (1, cfg.attn_channels, h, w)
    return shapes


@pytest.mark.parametrize(
    "name, norm",
    [("lite", n) for n in NORMS] + [("R_50", n) for n in NORMS] + [("R_101", None), ("R_101_dcni3", None)],
)
def test_raw_output_shapes(name, norm):
    model = build_model(name, norm=norm)
    with torch.no_grad():
        raw = model.forward_raw(torch.randn(1, 3, *SMALL_INPUT))
    assert {k: tuple(v.shape) for k, v in raw.items()} == raw_shapes(name, norm, *SMALL_INPUT)
    assert all(torch.isfinite(v).all() for v in raw.values())


def test_r50_state_dict_is_the_official_key_layout_training_only_seg_head_included():
    golden = load_golden()
    ours = {k: tuple(v.shape) for k, v in build_model("R_50").state_dict().items()}
    assert len(golden.keys_and_shapes()) == 379
    assert ours == dict(golden.keys_and_shapes())
    assert sum(k.startswith("basis_module.seg_head.") for k in ours) == 14


@pytest.mark.parametrize("name, official_keys", [("R_101", 634), ("R_101_dcni3", 656)])
def test_key_counts_match_the_released_checkpoints(name, official_keys):
    assert len(build_model(name).state_dict()) == official_keys


def test_dcni3_deforms_every_third_block_of_res3_to_res5():
    state = build_model("R_101_dcni3").state_dict()
    offsets = sorted(k for k in state if k.endswith("conv2_offset.weight"))
    stages = [k.split(".")[2] for k in offsets]
    assert (stages.count("res3"), stages.count("res4"), stages.count("res5")) == (2, 8, 1)
    assert tuple(state["backbone.bottom_up.res4.3.conv2_offset.weight"].shape) == (27, 256, 3, 3)


def test_deformable_block_with_zero_offsets_and_open_mask_is_a_plain_conv():
    cfg = get_config("lite")
    torch.manual_seed(0)
    block = Bottleneck(cfg, 64, 16, 64, 1, deform=True).eval()
    nn.init.constant_(block.conv2_offset.bias[18:], 30.0)  # sigmoid(30) == 1: every tap fully on
    x = torch.randn(1, 16, 9, 11)
    with torch.no_grad():
        deformed = block.conv2(x, block.conv2_offset(x))
        plain = block.conv2.norm(nn.functional.conv2d(x, block.conv2.weight, padding=1))
    torch.testing.assert_close(deformed, plain, rtol=1e-5, atol=1e-5)


def test_stride_two_sits_on_conv1():
    block = build_model("R_50").backbone.bottom_up.res3[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)


def test_initialisation_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_model("lite", seed=7), build_model("lite", seed=7), build_model("lite", seed=8)
    assert torch.rand(1) == expected_next
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_same_input_gives_bitwise_identical_outputs():
    model = build_model("lite")
    x = torch.randn(2, 3, *SMALL_INPUT)
    with torch.no_grad():
        first, second = model.forward_raw(x), model.forward_raw(x)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_user_factory_is_built_from_module_colon_name():
    model = build_model("pytest_blendmask.model:build_model")
    assert model.cfg.name == "lite" and not model.training


def test_unknown_config_and_norm_are_named():
    with pytest.raises(ValueError, match="R_34.*lite"):
        get_config("R_34")
    with pytest.raises(ValueError, match="syncbn"):
        get_config("lite", "syncbn")
    assert set(CONFIG_NAMES) == {"lite", "R_50", "R_101", "R_101_dcni3", "550_R_50_3x", "RT_R_50_4x_bn-head_syncbn_shtw"}


def test_forward_with_streams_needs_an_accelerator():
    with pytest.raises(RuntimeError, match="cuda or npu"):
        build_model("lite").forward_with_streams(torch.randn(1, 3, *SMALL_INPUT))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: streams are compared on a GPU only")
def test_stream_parallel_heads_equal_the_serial_path():
    model = build_model("lite").cuda()
    x = torch.randn(2, 3, 256, 256, device="cuda")
    with torch.no_grad():
        serial, streamed = model.forward_raw(x), model.forward_with_streams(x)
    torch.cuda.synchronize()
    for key in serial:
        torch.testing.assert_close(streamed[key], serial[key], rtol=0, atol=0)


# --- checkpoint loading -------------------------------------------------------------


@pytest.fixture(scope="module")
def official_r50_state():
    return load_golden().state_dict()


def test_official_pth_loads_bare_or_wrapped_with_old_centerness_names(tmp_path, official_r50_state):
    old = {k.replace(".ctrness.", ".centerness."): v for k, v in official_r50_state.items()}
    assert any(".centerness." in k for k in old)
    for name, payload in (("bare.pth", old), ("wrapped.pth", {"model": old, "iteration": 90000})):
        torch.save(payload, tmp_path / name)
        model = load_weights(build_model("R_50"), tmp_path / name)
        torch.testing.assert_close(
            model.proposal_generator.fcos_head.ctrness.weight, official_r50_state["proposal_generator.fcos_head.ctrness.weight"]
        )


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth: cannot read weights"):
        load_weights(build_model("lite"), tmp_path / "evil.pth")


def test_bn_trained_weights_load_into_the_frozen_bn_model(tmp_path):
    from safetensors.torch import save_file

    trained = build_model("lite", norm="frozen_bn", seed=3).state_dict()
    trained["backbone.bottom_up.stem.conv1.norm.num_batches_tracked"] = torch.tensor(5)
    save_file(trained, tmp_path / "lite.safetensors")
    model = load_weights(build_model("lite"), tmp_path / "lite.safetensors")
    assert torch.equal(model.top_layer.weight, trained["top_layer.weight"])


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s: s.pop("top_layer.bias"), "missing key 'top_layer.bias'"),
        (lambda s: s.update({"top_layer.bias": torch.zeros(3)}), r"key 'top_layer.bias' has shape \[3\], the model expects \[784\]"),
        (lambda s: s.update({"extra.weight": torch.zeros(1)}), "unexpected key 'extra.weight'"),
    ],
)
def test_mismatched_weights_name_the_file_and_the_first_bad_key(tmp_path, corrupt, message):
    from safetensors.torch import save_file

    state = build_model("lite").state_dict()
    corrupt(state)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match=f"bad.safetensors: {message}"):
        load_weights(build_model("lite"), tmp_path / "bad.safetensors")


def test_truncated_and_missing_files_are_named(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "cut.safetensors"
    save_file(build_model("lite").state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="cut.safetensors: cannot read weights"):
        load_weights(build_model("lite"), path)
    with pytest.raises(WeightsError, match="nope.safetensors: weight file not found"):
        load_weights(build_model("lite"), tmp_path / "nope.safetensors")

"""The released real-time models: official key layouts load strictly, and the network runs on them.

The official layouts are derived here from AdelaiDet's own R_50 checkpoint layout (the golden
case's key list) by the differences their yaml files state, not from our model code, so a
module built under the wrong name, shape or norm fails the comparison.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
import torch

from pytest_blendmask import settings
from pytest_blendmask.model import WeightsError, build_model, get_config, load_weights

from .golden import golden_state_dict, load_golden

Layout = dict[str, tuple[int, ...]]

SEED = 2026
INPUT_HW = (128, 128)  # the smallest square whose P6 (stride 64) is more than one cell
HEAD = "proposal_generator.fcos_head."
BASIS_TOWER = "basis_module.tower."
FPN_CHANNELS = 256
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _without(layout: Layout, prefixes: Iterable[str]) -> Layout:
    return {k: s for k, s in layout.items() if not k.startswith(tuple(prefixes))}


def _two_conv_basis_tower(layout: Layout) -> Layout:
    """BASIS_MODULE.NUM_CONVS: 2: the third tower block goes, the later indices move down by one."""
    out = {}
    for key, shape in _without(layout, [f"{BASIS_TOWER}2."]).items():
        for old, new in ((f"{BASIS_TOWER}4.", f"{BASIS_TOWER}3."), (f"{BASIS_TOWER}5.", f"{BASIS_TOWER}4.")):
            key = key.replace(old, new)
        out[key] = shape
    return out


def _share_tower(norm_keys: Callable[[str], Layout]) -> Layout:
    """FCOS.NUM_SHARE_CONVS: 3: convs at 0, 3, 6 (with bias), norms at 1, 4, 7."""
    out: Layout = {}
    for i in range(3):
        out[f"{HEAD}share_tower.{3 * i}.weight"] = (FPN_CHANNELS, FPN_CHANNELS, 3, 3)
        out[f"{HEAD}share_tower.{3 * i}.bias"] = (FPN_CHANNELS,)
        out.update(norm_keys(f"{HEAD}share_tower.{3 * i + 1}"))
    return out


def _gn(slot: str) -> Layout:
    return {f"{slot}.{s}": (FPN_CHANNELS,) for s in ("weight", "bias")}


def _bn_per_level(levels: int) -> Callable[[str], Layout]:
    """A BN head's norm slot: one BatchNorm per FPN level (AdelaiDet's ModuleListDial)."""
    return lambda slot: {
        f"{slot}.{level}.{s}": () if s == "num_batches_tracked" else (FPN_CHANNELS,)
        for level in range(levels)
        for s in BN_SUFFIXES
    }


def r50_layout() -> Layout:
    return dict(load_golden().keys_and_shapes())


def layout_550_r_50_3x() -> Layout:
    """Base-550.yaml on R_50: TOP_LEVELS 1 (no p7), a GN share tower instead of cls/box towers, 2 basis convs."""
    layout = _without(r50_layout(), ["backbone.top_block.p7.", f"{HEAD}cls_tower.", f"{HEAD}bbox_tower."])
    return _two_conv_basis_tower(layout) | _share_tower(_gn)


def layout_rt_r_50_4x_bn_head_syncbn_shtw() -> Layout:
    """Base-RT + shtw + bn-head: no top block, SyncBN backbone, per-level BN share tower, 2 basis convs."""
    layout = _two_conv_basis_tower(
        _without(r50_layout(), ["backbone.top_block.", f"{HEAD}cls_tower.", f"{HEAD}bbox_tower."])
    )
    # RESNETS.NORM SyncBN with FREEZE_AT -1: every backbone norm is a BN, step counter included.
    layout |= {
        key.removesuffix("running_var") + "num_batches_tracked": ()
        for key in layout
        if key.startswith("backbone.bottom_up.") and key.endswith(".running_var")
    }
    return layout | _share_tower(_bn_per_level(3))


# name, official layout, its key count worked out by hand from R_50's 379:
# 550: -2 (p7) -32 (cls/box towers) +12 (share tower) -6 (basis tower.2) = 351;
# RT: -4 (p6, p7) -32 +51 (share tower, 3 levels of BN) -6 +53 (backbone norms' counters) = 441.
ZOO = [
    ("550_R_50_3x", layout_550_r_50_3x, 351),
    ("RT_R_50_4x_bn-head_syncbn_shtw", layout_rt_r_50_4x_bn_head_syncbn_shtw, 441),
]
ZOO_NAMES = [name for name, _, _ in ZOO]


@pytest.fixture(scope="module", params=ZOO, ids=ZOO_NAMES)
def zoo_case(request, tmp_path_factory) -> tuple[str, Layout, torch.nn.Module, dict[str, torch.Tensor]]:
    """(name, official layout, model loaded from an official-layout .pth, that file's tensors)."""
    name, make_layout, _ = request.param
    layout = make_layout()
    state = golden_state_dict(list(layout.items()), SEED)
    path = tmp_path_factory.mktemp("zoo") / f"{name}.pth"
    torch.save({"model": state, "iteration": 270000}, path)  # a released file's wrapping
    return name, layout, load_weights(build_model(name), path), state


@pytest.mark.parametrize("name, make_layout, count", ZOO, ids=ZOO_NAMES)
def test_state_dict_is_the_official_layout(name, make_layout, count):
    layout = make_layout()
    ours = {k: tuple(v.shape) for k, v in build_model(name).state_dict().items()}
    assert len(layout) == count
    assert ours == layout


@pytest.mark.parametrize(
    "name, strides, share_convs, head_convs, basis_convs, norm, input_size",
    [
        ("550_R_50_3x", (8, 16, 32, 64), 3, 0, 2, "frozen_bn", 550),
        ("RT_R_50_4x_bn-head_syncbn_shtw", (8, 16, 32), 3, 0, 2, "bn", 512),
    ],
)
def test_config_follows_the_adelaidet_yaml(name, strides, share_convs, head_convs, basis_convs, norm, input_size):
    cfg = get_config(name)
    assert (cfg.fpn_strides, cfg.share_convs, cfg.head_convs, cfg.basis_convs, cfg.norm, cfg.input_size) == (
        strides, share_convs, head_convs, basis_convs, norm, input_size
    )
    assert (cfg.num_bases, cfg.attn_size, cfg.attn_channels, cfg.seg_head) == (4, 14, 784, True)


def test_official_file_loads_every_tensor(zoo_case):
    _, layout, model, state = zoo_case
    loaded = model.state_dict()
    assert set(loaded) == set(layout)
    assert all(torch.equal(loaded[k], state[k]) for k in layout)


def test_forward_on_official_weights_gives_raw_outputs_and_detections(zoo_case):
    name, _, model, _ = zoo_case
    cfg = get_config(name)
    image = torch.randint(0, 256, (3, *INPUT_HW), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch, sizes = model.preprocess([image])
    with torch.no_grad():
        raw = model.forward_raw(batch)
    expected = {"bases": (1, cfg.num_bases, INPUT_HW[0] // 4, INPUT_HW[1] // 4)}
    for level, stride in zip(cfg.fpn_levels, cfg.fpn_strides):
        h, w = INPUT_HW[0] // stride, INPUT_HW[1] // stride
        expected |= {
            f"logits_p{level}": (1, cfg.num_classes, h, w),
            f"bbox_reg_p{level}": (1, 4, h, w),
            f"ctrness_p{level}": (1, 1, h, w),
            f"top_feats_p{level}": (1, cfg.attn_channels, h, w),
        }
    assert {k: tuple(v.shape) for k, v in raw.items()} == expected
    assert all(torch.isfinite(v).all() for v in raw.values())
    dets = model.postprocess(raw, sizes)[0]
    count = len(dets["scores"])
    # Golden-rule weights saturate RT's BN head (no GN renormalises it): every score is 1.0 and
    # the ties at the top-100 cut-off are all kept, so only "some" is checked here.
    assert count > 0
    assert dets["boxes"].shape == (count, 4) and dets["masks"].shape == (count, *INPUT_HW)


def test_training_only_seg_head_is_loaded_but_never_run(zoo_case):
    _, _, model, state = zoo_case
    calls = []
    handle = model.basis_module.seg_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            model.forward_raw(torch.zeros(1, 3, 64, 64))
    finally:
        handle.remove()
    assert calls == []
    assert torch.equal(model.basis_module.seg_head[6].bias, state["basis_module.seg_head.6.bias"])


def test_r50_checkpoint_is_refused_by_the_550_layout_naming_the_first_missing_key(tmp_path):
    path = tmp_path / "R_50.pth"
    torch.save(load_golden().state_dict(), path)
    with pytest.raises(WeightsError, match=rf"R_50.pth: missing key '{HEAD}share_tower.0.weight'"):
        load_weights(build_model("550_R_50_3x"), path)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_bm_model_accepts_the_adelaidet_config_name(name):
    assert settings.parse_model(name) == name

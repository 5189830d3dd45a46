"""Grid selection: which points quick and full measure, on which devices, and which of them skip."""
from __future__ import annotations

import pytest

from pytest_blendmask.fixtures import perf_grid_points
from pytest_blendmask.perf.grid import GridPoint, eager_devices, grid_spec, skip_reason
from pytest_blendmask.targets import parse_target


def test_quick_grid_defaults() -> None:
    spec = grid_spec("quick", (1, 2, 4, 8, 16), None)
    assert (spec.batch_sizes, spec.input_sizes) == ((1, 2), ((256, 256),))
    assert (spec.warmup_rounds, spec.rounds, spec.e2e_rounds) == (1, 10, 3)
    assert spec.dtypes("cpu") == ("fp32", "bf16")
    assert spec.dtypes("cuda:0") == spec.dtypes("npu:3") == ("fp32", "fp16")


def test_quick_grid_takes_the_two_smallest_batch_sizes_and_the_given_input_size() -> None:
    spec = grid_spec("quick", (16, 4, 8), (480, 640))
    assert (spec.batch_sizes, spec.input_sizes) == ((4, 8), ((480, 640),))


def test_full_grid_takes_every_batch_size_both_sizes_and_all_dtypes() -> None:
    spec = grid_spec("full", (1, 2, 4, 8, 16), None)
    assert (spec.batch_sizes, spec.input_sizes) == ((1, 2, 4, 8, 16), ((512, 512), (640, 640)))
    assert spec.dtypes("cpu") == spec.dtypes("npu:0") == ("fp32", "fp16", "bf16")
    assert len(spec.points(["npu:0"])) == 5 * 2 * 3 * 2 * 2


def test_unknown_grid_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown perf grid 'huge'; expected one of quick, full"):
        grid_spec("huge", (1,), None)


def test_points_cross_every_axis_in_order_with_readable_ids() -> None:
    points = grid_spec("quick", (1, 2), None).points(["cpu"])
    assert len(points) == 2 * 2 * 2 * 2  # batch x dtype x norm x mode
    assert [p.id for p in points[:4]] == [
        "cpu-bs1-256x256-fp32-gn-serial", "cpu-bs1-256x256-fp32-gn-streams",
        "cpu-bs1-256x256-fp32-bn-serial", "cpu-bs1-256x256-fp32-bn-streams",
    ]
    assert points[-1].id == "cpu-bs2-256x256-bf16-bn-streams"


@pytest.mark.parametrize(("dtype", "target"), [("fp32", "cpu"), ("bf16", "cpu:bf16")])
def test_point_target_is_the_eager_target_id(dtype: str, target: str) -> None:
    assert GridPoint("cpu", 1, (256, 256), dtype, "gn", "serial").target.id == target


def test_eager_devices_are_distinct_and_skip_runtime_targets() -> None:
    targets = [parse_target(t) for t in ("cpu:fp16", "ort", "cpu", "cuda:0:fp16", "om", "cuda:0")]
    assert eager_devices(targets) == ["cpu", "cuda:0"]


def test_streams_skip_on_the_cpu_with_the_reason() -> None:
    point = GridPoint("cpu", 1, (256, 256), "fp32", "bn", "streams")
    assert skip_reason(point) == "stream-parallel FPN heads need a cuda or npu device; cpu has no streams"
    assert skip_reason(GridPoint("cpu", 1, (256, 256), "fp32", "bn", "serial")) is None


def test_accelerator_points_skip_with_the_target_availability_reason() -> None:
    point = GridPoint("cuda:0", 1, (256, 256), "fp16", "bn", "streams")
    assert skip_reason(point) == parse_target("cuda:0:fp16").skip_reason()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--bm-target=cpu", "--bm-target=ort"], 16),
        (["--bm-target=ort"], 0),
        (["--bm-target=cpu", "--bm-perf-grid=full", "--bm-batch-sizes=1,8"], 2 * 2 * 3 * 2 * 2),
    ],
)
def test_perf_grid_points_follow_the_options(pytester: pytest.Pytester, args: list[str], expected: int) -> None:
    config = pytester.parseconfigure(*args)
    points = perf_grid_points(config)
    assert len(points) == expected
    assert all(p.device == "cpu" for p in points)

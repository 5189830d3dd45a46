"""The plugin's fixtures, registered through their own ``pytest11`` entry point.

torch and the model are imported inside the fixtures, so that loading the plugin (as
``pytest --help`` does) stays free of CUDA and CANN.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from pytest_blendmask.placement import pin_target, worker_device
from pytest_blendmask.report.record import record
from pytest_blendmask.settings import SEED, Settings, thresholds_path, weights_path
from pytest_blendmask.targets import TargetSpec, auto_targets, availability, probe_torch_npu

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch

    from pytest_blendmask.perf.grid import GridPoint, GridSpec
    from pytest_blendmask.perf.ladder import PerfPoint

settings_key = pytest.StashKey[Settings]()
targets_key = pytest.StashKey["list[TargetSpec]"]()

SAMPLE_IMAGES = 2  # two images, so that code mixing up per-image results shows it


def chosen_targets(config: pytest.Config) -> list[TargetSpec]:
    """The targets under test: --bm-target, else auto-selected once per session."""
    if targets_key not in config.stash:
        explicit = config.stash[settings_key].targets
        config.stash[targets_key] = list(explicit) if explicit else auto_targets()
    return config.stash[targets_key]


@dataclass(frozen=True)
class SampleBatch:
    """Synthetic images and the model's preprocessed view of them."""

    images: list[torch.Tensor]  # BGR uint8 [3, H, W] each
    tensor: torch.Tensor  # float [N, 3, Hp, Wp], normalised and padded
    image_sizes: list[tuple[int, int]]


@pytest.fixture(scope="session")
def bm_settings(pytestconfig: pytest.Config) -> Settings:
    """The validated --bm-* options of this session."""
    return pytestconfig.stash[settings_key]


@pytest.fixture(scope="session")
def blendmask_model(bm_settings: Settings) -> torch.nn.Module:
    """The BlendMask model chosen by --bm-model with --bm-weights (or shipped/random) loaded, eval, CPU."""
    from pytest_blendmask.model import build_model
    from pytest_blendmask.model.weights import load_weights

    model = build_model(bm_settings.model, seed=SEED)
    weights = weights_path(bm_settings)
    if weights is not None:
        load_weights(model, weights)
    # Without weights the model keeps its seeded random init; the report header says so.
    return model.eval()


@pytest.fixture(scope="session")
def cpu_device() -> torch.device:
    """The CPU, where the golden reference runs."""
    import torch

    return torch.device("cpu")


@pytest.fixture(scope="session")
def npu_device() -> torch.device:
    """The first Ascend NPU; skips with the torch_npu probe's reason where there is none."""
    reason = probe_torch_npu()
    if reason is not None:
        pytest.skip(reason)
    import torch

    return torch.device("npu:0")


@pytest.fixture(scope="session")
def reference_target(bm_settings: Settings) -> TargetSpec:
    """The golden reference target chosen by --bm-reference (default cpu, fp32)."""
    return bm_settings.reference


@pytest.fixture(scope="session")
def dut_targets(pytestconfig: pytest.Config) -> list[TargetSpec]:
    """All targets under test (--bm-target, else auto-selected), available or not."""
    return chosen_targets(pytestconfig)


@pytest.fixture
def dut_target(request: pytest.FixtureRequest) -> TargetSpec:
    """One target under test (tests are parametrized over them); skips with the reason if unavailable."""
    # Under --bm-devices the parameter (and the test id) stays the spec given; the worker's
    # pinned device replaces the device of an eager target of the same type.
    target = pin_target(request.param, worker_device(request.config, request.config.stash[settings_key]))
    reason = availability(target)
    if reason is not None:
        pytest.skip(reason)
    return target


@pytest.fixture(scope="session")
def sample_batch(blendmask_model: Any, bm_settings: Settings) -> SampleBatch:
    """Deterministic synthetic BGR images at --bm-input-size, preprocessed by the model."""
    import torch

    from pytest_blendmask.model import get_config

    height, width = bm_settings.input_size or (get_config(bm_settings.model).input_size,) * 2
    generator = torch.Generator().manual_seed(SEED)
    # Blocky images (8x8-pixel tiles) rather than per-pixel noise: edges and flat areas
    # give activations closer to real photographs.
    tiles = torch.randint(0, 256, (SAMPLE_IMAGES, 3, height // 8, width // 8), generator=generator, dtype=torch.uint8)
    images = list(tiles.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3))
    tensor, image_sizes = blendmask_model.preprocess(images)
    return SampleBatch(images, tensor, image_sizes)


@pytest.fixture(scope="session")
def thresholds(bm_settings: Settings) -> dict[str, Any]:
    """The thresholds TOML (--bm-thresholds, else the packaged default) as a dict; {} if neither exists."""
    path = thresholds_path(bm_settings)
    return tomllib.loads(path.read_text(encoding="utf-8")) if path else {}


@pytest.fixture
def bm_record(request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """Record a gate's verdict for the reports; fails the test when the verdict is a failure.

    ``bm_record(family, target, metric, value, limit, unit, passed, *, op=None, detail="", **extra)``,
    the arguments of ``pytest_blendmask.report.record`` after ``request``::

        bm_record("precision", dut_target.id, "relative_l2_error", err, 0.1, "", err <= 0.1, op="<=")
    """
    return functools.partial(record, request.node)


@pytest.fixture(scope="session")
def bm_worker_device(pytestconfig: pytest.Config, bm_settings: Settings) -> str | None:
    """The --bm-devices entry this xdist worker is pinned to (gwK -> devices[K % len]); None without --bm-devices."""
    return worker_device(pytestconfig, bm_settings)


def perf_grid_points(config: pytest.Config) -> list[GridPoint]:
    """The points of --bm-perf-grid over the devices of the eager targets under test (for parametrization)."""
    from pytest_blendmask.perf.grid import eager_devices, grid_spec

    settings = config.stash[settings_key]
    spec = grid_spec(settings.perf_grid, settings.batch_sizes, settings.input_size)
    return spec.points(eager_devices(chosen_targets(config)))


@pytest.fixture(scope="session")
def perf_grid(bm_settings: Settings) -> GridSpec:
    """The perf grid chosen by --bm-perf-grid: its axes and round counts."""
    from pytest_blendmask.perf.grid import grid_spec

    return grid_spec(bm_settings.perf_grid, bm_settings.batch_sizes, bm_settings.input_size)


@pytest.fixture(scope="session")
def perf_points(bm_settings: Settings, perf_grid: GridSpec) -> Iterator[list[PerfPoint]]:
    """Perf grid points measured (or skipped) so far; written with the ladder to <report dir>/perf_ladder.json at session end.

    Each xdist worker writes the points it ran; pytest-benchmark times nothing under xdist,
    so a distributed session measures (and writes) no points.
    """
    from pytest_blendmask.perf.ladder import PERF_REPORT_FILE, write_perf_report
    from pytest_blendmask.perf.timing import host_conditions

    points: list[PerfPoint] = []
    yield points
    if any(point.measured for point in points):
        context = {"grid": perf_grid.name, "host": host_conditions()}
        write_perf_report(bm_settings.report_dir / PERF_REPORT_FILE, points, context)

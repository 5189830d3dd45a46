"""The plugin's fixtures, registered through their own ``pytest11`` entry point.

torch and the model are imported inside the fixtures, so that loading the plugin (as
``pytest --help`` does) stays free of CUDA and CANN.
"""
from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_blendmask.placement import run_id, worker_device
from pytest_blendmask.precision.thresholds import Thresholds
from pytest_blendmask.results import record
from pytest_blendmask.settings import SEED, Settings, weights_path
from pytest_blendmask.targets import LoadContext, Target, auto_targets, probe_torch_npu


if TYPE_CHECKING:
    import torch

    from pytest_blendmask.data import CalibrationSet
    from pytest_blendmask.evaluation import DatasetEval
    from pytest_blendmask.perf.grid import GridPoint, GridSpec
    from pytest_blendmask.perf.ladder import PerfPoint
    from pytest_blendmask.perf.workload import TimedModel
    from pytest_blendmask.run_cache import RunCache

settings_key = pytest.StashKey[Settings]()
thresholds_key = pytest.StashKey[Thresholds]()
targets_key = pytest.StashKey["list[Target]"]()
factory_model_key = pytest.StashKey[Any]()  # a --bm-model module:factory model, built and checked at session start
class_map_key = pytest.StashKey["tuple[int, ...] | None"]()  # --bm-dataset's category id of each class, checked at session start

SAMPLE_IMAGES = 2  # two images, so that code mixing up per-image results shows it
# The detection level's images: the sample batch's and the next, the evaluation split's
# first 10 at its size, where the detection limits were measured.
DETECTION_IMAGES = 10
ACCURACY_IMAGES = 50  # the evaluation split's first 50 images: AP to about +-1 point
# With --bm-dataset the same levels take its evaluation images instead (data/dataset.py): the
# sample batch its first two, the detection level its first ten, the AP level all of them
# (--bm-dataset-limit); int8 targets and their floor calibrate on its first images.


def chosen_targets(config: pytest.Config) -> list[Target]:
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
def blendmask_model(pytestconfig: pytest.Config, bm_settings: Settings) -> torch.nn.Module:
    """The BlendMask model chosen by --bm-model with --bm-weights (or shipped/random) loaded, eval, CPU."""
    from pytest_blendmask.model import build_model
    from pytest_blendmask.model.weights import load_weights

    model = pytestconfig.stash.get(factory_model_key, None)
    if model is None:
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
def reference_target(bm_settings: Settings) -> Target:
    """The golden reference target chosen by --bm-reference (default cpu, fp32)."""
    return bm_settings.reference


@pytest.fixture(scope="session")
def dut_targets(pytestconfig: pytest.Config) -> list[Target]:
    """All targets under test (--bm-target, else auto-selected), available or not."""
    return chosen_targets(pytestconfig)


@pytest.fixture
def dut_target(request: pytest.FixtureRequest) -> Target:
    """One target under test (tests are parametrized over them); skips with the reason if unavailable."""
    # Under --bm-devices the parameter (and the test id) stays the spec given; the worker's
    # pinned device replaces the device of an eager target of the same type.
    target = request.param.pinned(worker_device(request.config, request.config.stash[settings_key]))
    reason = target.skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return target


def image_hw(settings: Settings) -> tuple[int, int]:
    """The images' (H, W): --bm-input-size, else the model config's square size."""
    from pytest_blendmask.model import get_config

    return settings.input_size or (get_config(settings.model).input_size,) * 2


def generated_images(settings: Settings, count: int) -> list[Any]:
    """The first ``count`` images (BGR, [3, H, W] uint8) of the evaluation distribution at --bm-input-size,
    so that a trained model detects something and the detection gates have pairs to compare."""
    import torch

    from pytest_blendmask.data import EVAL_SEED, generate_sample

    samples = [generate_sample(EVAL_SEED, index, *image_hw(settings)) for index in range(count)]
    return [torch.from_numpy(s.image).permute(2, 0, 1).contiguous() for s in samples]


def dataset_eval(config: pytest.Config, model: Any) -> DatasetEval | None:
    """--bm-dataset ready for the levels (``evaluation.DatasetEval``); None without one."""
    settings = config.stash[settings_key]
    if settings.dataset is None:
        return None
    from pytest_blendmask.evaluation import DatasetEval

    pad = tuple(getattr(model, "pixel_mean", (0.0, 0.0, 0.0)))  # padding normalises to ~0, as the batch's own
    return DatasetEval(settings.dataset, image_hw(settings), config.stash.get(class_map_key, None),
                       settings.dataset_limit, pad)


@pytest.fixture(scope="session")
def bm_dataset(pytestconfig: pytest.Config, blendmask_model: Any) -> DatasetEval | None:
    """--bm-dataset's evaluation images, class map and calibration set (``evaluation.DatasetEval``); None without it."""
    return dataset_eval(pytestconfig, blendmask_model)


@pytest.fixture(scope="session")
def calibration_set(bm_dataset: DatasetEval | None) -> CalibrationSet:
    """The images int8 targets and their noise floor calibrate on: --bm-dataset's first ones, else synthetic."""
    from pytest_blendmask.data import synthetic_calibration

    return bm_dataset.calibration() if bm_dataset is not None else synthetic_calibration()


def level_images(settings: Settings, data: DatasetEval | None, count: int) -> list[Any]:
    """The first ``count`` images of the evaluation images: --bm-dataset's letterboxed, else ``generated_images``."""
    if data is None:
        return generated_images(settings, count)
    return [boxed.image for boxed in data.letterboxed(count)]


@pytest.fixture(scope="session")
def sample_batch(blendmask_model: Any, bm_settings: Settings, bm_dataset: DatasetEval | None) -> SampleBatch:
    """The first two evaluation images (``level_images``), preprocessed by the model."""
    images = level_images(bm_settings, bm_dataset, SAMPLE_IMAGES)
    tensor, image_sizes = blendmask_model.preprocess(images)
    return SampleBatch(images, tensor, image_sizes)


@pytest.fixture(scope="session")
def thresholds(pytestconfig: pytest.Config) -> Thresholds:
    """The validated thresholds (--bm-thresholds, else the packaged default)."""
    return pytestconfig.stash[thresholds_key]


@pytest.fixture(scope="session")
def run_cache(pytestconfig: pytest.Config, blendmask_model: Any, bm_settings: Settings) -> RunCache:
    """Results on disk: the CPU reference's kept across runs (--bm-reference-cache), each device's shared by this session's xdist workers."""
    from pytest_blendmask.run_cache import open_run_cache

    return open_run_cache(blendmask_model, bm_settings, run_id(pytestconfig), workers_share=hasattr(pytestconfig, "workerinput"))


def batch_key(batch: SampleBatch, settings: Settings) -> dict[str, Any]:
    """The cache key parts of a run of ``batch``: its tensor, image sizes and the dump mode."""
    from pytest_blendmask.run_cache import tensors_digest

    return {"batch": tensors_digest([batch.tensor]), "image_sizes": [list(s) for s in batch.image_sizes],
            "dump_mode": settings.dump_mode}


def synthetic_split(limit: int | None) -> tuple[Path, int]:
    """The synthetic evaluation split of the first ``limit`` images (``ACCURACY_IMAGES`` when None), and
    that count: image k is the same in a split of any length, so no more are generated than are scored."""
    from pytest_blendmask.data import ensure_split

    count = limit or ACCURACY_IMAGES
    return ensure_split(num_images=count), count


def split_key(data: DatasetEval | None, limit: int | None) -> dict[str, Any]:
    """The cache key parts of a ``split_run``: the files its images are read from (``--bm-dataset``'s
    annotations and images with their letterbox, else the synthetic split's) and how many."""
    from pytest_blendmask.run_cache import files_digest

    if data is None:
        from pytest_blendmask.data import ANNOTATIONS_FILE, load_split

        root, count = synthetic_split(limit)
        files = [root / ANNOTATIONS_FILE, *load_split(root).image_paths[:count]]
        return {"split": root.name, "files": files_digest(files), "limit": count}
    images = data.images[:limit]
    files = [data.dataset.annotations, *(data.dataset.image_path(image) for image in images)]
    return {"split": "dataset", "files": files_digest(files), "limit": limit, "input_hw": list(data.input_hw),
            "pad_bgr": list(data.pad_bgr), "category_ids": data.category_ids and list(data.category_ids)}


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
def perf_points() -> list[PerfPoint]:
    """Perf grid points measured (or skipped) so far in this process, for the floors to read.

    The ladder in <report dir>/perf_ladder.json is written by the report controller from the
    points the grid tests' reports carry, not from this list: an xdist worker sees only its own.
    """
    return []


@pytest.fixture(scope="session")
def perf_model(blendmask_model: Any, bm_settings: Settings) -> Callable[[str, str], TimedModel]:
    """``perf_model(norm, device)`` -> a fresh copy on ``device`` of the session's model and weights in the ``norm`` layout (a ``TimedModel``), refitted once per norm."""
    import torch

    from pytest_blendmask.perf.workload import timed_model

    weights = weights_path(bm_settings)
    described = weights.name if weights else f"random init (seed {SEED})"
    by_norm: dict[str, TimedModel] = {}

    def get(norm: str, device: str) -> TimedModel:
        if norm not in by_norm:
            by_norm[norm] = timed_model(blendmask_model, norm, described)
        return by_norm[norm].on(torch.device(device))

    return get


@pytest.fixture
def dump_collector(bm_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Factory ``dump_collector(model, mode=--bm-dump-mode, include=..., exclude=...)``; dumps persist to --bm-dump-dir."""
    from pytest_blendmask.precision.dump import DumpCollector

    made: list[DumpCollector] = []

    def make(model: torch.nn.Module, **kwargs: Any) -> DumpCollector:
        made.append(DumpCollector(model, **{"mode": bm_settings.dump_mode, **kwargs}))
        return made[-1]

    yield make
    if bm_settings.dump_dir is not None:
        test_dir = bm_settings.dump_dir / re.sub(r"[^\w.-]+", "_", request.node.name)
        for index, collector in enumerate(made):
            collector.dump.save(test_dir / str(index))


@pytest.fixture(scope="session")
def onnx_model(blendmask_model: Any, sample_batch: SampleBatch) -> Any:
    """The raw network exported to ONNX (opset 11, batch 1, checked; cached by weights, config and opset)."""
    from pytest_blendmask.atc.export import export_onnx

    return export_onnx(blendmask_model, tuple(sample_batch.tensor.shape[-2:]), opset=11)


@pytest.fixture(scope="session")
def compiled_om(onnx_model: Any, bm_settings: Settings) -> Any:
    """The ONNX model compiled by ATC for --bm-soc-version (allow_fp32_to_fp16); skips where there is no atc."""
    from pytest_blendmask.targets.om import OmTarget

    om = OmTarget()
    reason = om.skip_reason("compile")
    if reason is not None:
        pytest.skip(reason)
    return om.compile(onnx_model, bm_settings.soc_version)


@pytest.fixture(scope="session")
def compiled_target(blendmask_model: Any, sample_batch: SampleBatch, bm_settings: Settings,
                    calibration_set: CalibrationSet) -> Callable[[Target], Any]:
    """``compiled_target(spec)`` -> the target's runner (batch -> raw tensors), built once: exported and compiled for ``ort*``/``om``, a device copy for eager targets."""
    cache: dict[str, Any] = {}

    def get(spec: Target) -> Any:
        if spec.id not in cache:
            context = LoadContext(tuple(sample_batch.tensor.shape[-2:]), bm_settings.soc_version,
                                  deform_conv=bm_settings.deform_conv, calibration=calibration_set)
            cache[spec.id] = spec.load(blendmask_model, context)
        return cache[spec.id]

    return get


@pytest.fixture(scope="session")
def split_run(blendmask_model: Any, compiled_target: Callable[[Target], Any], bm_dataset: DatasetEval | None,
              run_cache: RunCache) -> Callable[..., Any]:
    """``split_run(spec, limit=None)`` -> the target's ``SplitRun`` (its whole pipeline's detections, and the
    host's decoding of its raw tensors) over the first ``limit`` evaluation images (None: --bm-dataset's
    evaluation images, else the synthetic split's first 50), computed once per target and limit (``run_cache``)."""
    from pytest_blendmask.evaluation import run_dataset, run_split

    cache: dict[tuple[str, int | None], Any] = {}

    def compute(spec: Target, limit: int | None) -> Any:
        if bm_dataset is not None:
            return run_dataset(blendmask_model, spec, bm_dataset, compiled_target(spec), limit)
        root, count = synthetic_split(limit)
        return run_split(blendmask_model, spec, root, limit=count, runner=compiled_target(spec))

    def get(spec: Target, limit: int | None = None) -> Any:
        if (spec.id, limit) not in cache:
            cache[spec.id, limit] = run_cache.result("split_run", spec, split_key(bm_dataset, limit),
                                                     lambda: compute(spec, limit))
        return cache[spec.id, limit]

    return get


@pytest.fixture(scope="session")
def coco_accuracy(split_run: Callable[..., Any], bm_dataset: DatasetEval | None, run_cache: RunCache) -> Callable[..., Any]:
    """``coco_accuracy(spec, limit=None)`` -> COCO box/mask AP of a target's ``split_run``, computed once per target and limit (``run_cache``)."""
    from pytest_blendmask.environment import distribution_version
    from pytest_blendmask.evaluation import score

    cache: dict[tuple[str, int | None], Any] = {}

    def get(spec: Target, limit: int | None = None) -> Any:
        if (spec.id, limit) not in cache:
            # pycocotools does the scoring: another version may score the same detections otherwise.
            parts = {**split_key(bm_dataset, limit), "pycocotools": distribution_version("pycocotools")}
            cache[spec.id, limit] = run_cache.result("coco_accuracy", spec, parts, lambda: score(split_run(spec, limit)))
        return cache[spec.id, limit]

    return get


def save_run_dump(config: pytest.Config, run: Any, reference: Target, batch: SampleBatch) -> None:
    """Write a ``TargetRun``'s dump to --bm-dump-dir in --bm-dump-mode (``precision/dump_dir.py``);
    the reference's graph outputs too, what compiled targets are compared with."""
    from pytest_blendmask.precision.dump import dump_from_outputs
    from pytest_blendmask.precision.dump_dir import write_target_dump

    settings = config.stash[settings_key]
    assert settings.dump_dir is not None
    keep = (lambda dump: dump) if settings.dump_mode == "full" else (lambda dump: dump.without_data())
    graph_outputs = keep(dump_from_outputs(run.raw)) if run.target.id == reference.id else None
    write_target_dump(
        settings.dump_dir, run.target.id, keep(run.dump), run=run_id(config),
        granularity="graph outputs" if run.target.compiled else "module outputs", reference_id=reference.id,
        batch={"name": "sample_batch", "images": len(batch.images), "shape": list(batch.tensor.shape)},
        graph_outputs=graph_outputs,
    )


@contextlib.contextmanager
def spill_folder(dump_dir: Path | None) -> Iterator[Path | None]:
    """Where a run's full dump is written while its forward runs (``DumpCollector``'s ``spill_dir``), so a
    big model's dump is never all in memory: a hidden folder in --bm-dump-dir, removed once the dump is
    written in msprobe's layout (on POSIX the dump's memory maps keep the data while it is used); None
    without --bm-dump-dir."""
    if dump_dir is None:
        yield None
        return
    dump_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".spill-", dir=dump_dir, ignore_cleanup_errors=True) as spill:
        yield Path(spill)


@pytest.fixture(scope="session")
def target_run(
    pytestconfig: pytest.Config, blendmask_model: Any, sample_batch: SampleBatch,
    compiled_target: Callable[[Target], Any], reference_target: Target, bm_settings: Settings, run_cache: RunCache,
) -> Callable[[Target], Any]:
    """``target_run(spec)`` -> the TargetRun (raw, dump, detections) of ``sample_batch``, computed once per target (``run_cache``); its dump goes to
    --bm-dump-dir, streamed to disk while the forward runs."""
    cache: dict[str, Any] = {}
    parts = batch_key(sample_batch, bm_settings)

    def run(spec: Target) -> Any:
        if spec.id not in cache:
            with spill_folder(bm_settings.dump_dir) as spill:
                cache[spec.id] = run_cache.result("target_run", spec, parts, lambda: spec.run(
                    blendmask_model, sample_batch.tensor, sample_batch.image_sizes, runner=compiled_target(spec),
                    spill_dir=spill))
                if bm_settings.dump_dir is not None:
                    save_run_dump(pytestconfig, cache[spec.id], reference_target, sample_batch)
        return cache[spec.id]

    return run


@pytest.fixture(scope="session")
def tensor_comparison(target_run: Callable[[Target], Any], reference_target: Target, thresholds: Thresholds) -> Callable[[Target], Any]:
    """``tensor_comparison(spec)``: the target's layer-by-layer ``ComparisonResult`` against the reference, computed once per target."""
    from pytest_blendmask.precision.compare import compare

    cache: dict[str, Any] = {}

    def get(spec: Target) -> Any:
        if spec.id not in cache:
            ref, dut = target_run(reference_target), target_run(spec)
            # A compiled target exposes its graph outputs only: it says what of the reference to compare with.
            cache[spec.id] = compare(spec.reference_dump(ref), dut.dump, thresholds.tensor[spec.precision])
        return cache[spec.id]

    return get


@pytest.fixture(scope="session")
def floor_comparison(
    blendmask_model: Any, sample_batch: SampleBatch, compiled_target: Callable[[Target], Any],
    target_run: Callable[[Target], Any], reference_target: Target, tensor_comparison: Callable[[Target], Any],
    thresholds: Thresholds, calibration_set: CalibrationSet, bm_settings: Settings, run_cache: RunCache,
) -> Callable[[Target], Any]:
    """``floor_comparison(spec)``: the target's ``LocalComparison`` (each module's local error and its
    accumulated error, against the noise floor of its precision), computed once per target, the floor once per
    emulation (``run_cache``: the floor is the reference's, kept across runs); None for a target whose modules cannot be run one by one. Skips, with the module that
    prevents it, where the model's forward cannot be replayed (a module changing its inputs in place)."""
    from pytest_blendmask.noise_floor import against_its_floor, target_floor
    from pytest_blendmask.precision.replay import ReplayError

    floors: dict[tuple[str, str], Any] = {}
    cache: dict[str, Any] = {}
    unreplayable: dict[str, str] = {}
    parts = batch_key(sample_batch, bm_settings)

    def get(spec: Target) -> Any:
        if spec.id in unreplayable:
            pytest.skip(unreplayable[spec.id])
        if spec.id not in cache:
            reference = target_run(reference_target)
            limits = {"tensor_limits": repr(thresholds.tensor[spec.precision]),
                      "local_limits": repr(thresholds.local[spec.precision])}

            def floor() -> Any:
                key = (spec.floor, spec.precision)
                if key not in floors:
                    # An int8 floor calibrates on the target's calibration images: their name is their identity.
                    calibration = calibration_set.name if spec.floor == "int8" else None
                    floors[key] = run_cache.reference_result(
                        f"floor {spec.floor}", {**parts, **limits, "calibration": calibration},
                        lambda: target_floor(spec, blendmask_model, sample_batch.tensor, reference, thresholds, calibration_set))
                return floors[key]

            try:
                cache[spec.id] = run_cache.result("floor_comparison", spec, {**parts, **limits}, lambda: against_its_floor(
                    spec, compiled_target(spec), blendmask_model, sample_batch.tensor, reference, floor, thresholds,
                    lambda: tensor_comparison(spec)))
            except ReplayError as exc:
                unreplayable[spec.id] = f"{spec.id}: the noise floor replays the model module by module, and cannot: {exc}"
                pytest.skip(unreplayable[spec.id])
        return cache[spec.id]

    return get


@pytest.fixture(scope="session")
def detection_run(blendmask_model: Any, bm_settings: Settings, bm_dataset: DatasetEval | None,
                  compiled_target: Callable[[Target], Any], run_cache: RunCache) -> Callable[[Target], Any]:
    """``detection_run(spec)`` -> the target's ``ImagesRun`` (its whole pipeline's detections, and the host's
    decoding of its raw tensors) of the detection images, two at a time, computed once per target (``run_cache``)."""
    from pytest_blendmask.evaluation import run_images
    from pytest_blendmask.run_cache import tensors_digest

    images = level_images(bm_settings, bm_dataset, DETECTION_IMAGES)
    parts = {"images": tensors_digest(images), "batch_size": SAMPLE_IMAGES}
    cache: dict[str, Any] = {}

    def run(spec: Target) -> Any:
        if spec.id not in cache:
            cache[spec.id] = run_cache.result("detection_run", spec, parts, lambda: run_images(
                blendmask_model, spec, compiled_target(spec), images, SAMPLE_IMAGES))
        return cache[spec.id]

    return run


@pytest.fixture(scope="session")
def detection_comparison(detection_run: Callable[[Target], Any], reference_target: Target, thresholds: Thresholds) -> Callable[[Target], Any]:
    """``detection_comparison(spec)``: the ``DetectionComparison`` of the target's ``detection_run`` against the reference's."""
    from pytest_blendmask.precision.match import compare_detections

    cache: dict[str, Any] = {}

    def get(spec: Target) -> Any:
        if spec.id not in cache:
            ref, dut = detection_run(reference_target), detection_run(spec)
            host = None if dut.host_detections is dut.detections else dut.host_detections
            cache[spec.id] = compare_detections(ref.detections, dut.detections,
                                                thresholds.detection[spec.precision].match_iou, dut.batch_size, host)
        return cache[spec.id]

    return get

"""Typed view of the ``--bm-*`` options and their ``bm_*`` ini twins, validated in one place.

Each option is declared once in ``OPTIONS``; the plugin registers the command-line flag and
the ini key from that declaration, and ``resolve_settings`` reads them back: the command line
wins unless it is absent (``None``), then the ini file, then the default in ``Settings``.
The ``parse_*`` functions are pure (ValueError on a bad value) so they are tested without
pytest; ``resolve_settings`` turns their errors into one ``pytest.UsageError`` that names the
option, the ini key, the accepted values and the value received.
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_blendmask.cache_dir import reference_dir
from pytest_blendmask.perf.grid import GRID_NAMES
from pytest_blendmask.precision.thresholds import Thresholds, ThresholdsError, load_thresholds
from pytest_blendmask.results import FAMILIES
from pytest_blendmask.targets import DEFORM_CONV_MODES, TARGET_FORMS, Target, parse_device, parse_target

if TYPE_CHECKING:
    from pytest_blendmask.data.dataset import CocoDataset

# Mirrors pytest_blendmask.model.CONFIG_NAMES (a unit test keeps them equal): importing the
# model package loads torch, which `pytest --help` must not do.
MODEL_NAMES = ("lite", "R_50", "R_101", "R_101_dcni3", "550_R_50_3x", "RT_R_50_4x_bn-head_syncbn_shtw")
# Mirrors pytest_blendmask.precision.dump.MODES (a unit test keeps them equal): that module imports torch.
DUMP_MODES = ("full", "stats")
SEED = 0  # model initialisation and synthetic inputs
THRESHOLDS_FILE = "precision/thresholds_default.toml"
SIZE_DIVISOR = 32  # the FPN's coarsest backbone stride: inputs are padded to a multiple of it
# --bm-reference-cache: load the reference's results an earlier run stored, or compute them again.
RECOMPUTE_REFERENCE = "recompute"
REFERENCE_CACHE_MODES = ("reuse", RECOMPUTE_REFERENCE)
DATASET_LIMIT = 50  # evaluation images of --bm-dataset: AP to about +-1 point, ~1 min per lite target on 2 cores

# What --bm-require can demand: a test family (marker) or an accelerator type.
REQUIRE_TAGS = (*FAMILIES, "npu", "cuda")

_FACTORY_RE = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_]\w*)")
_SOC_RE = re.compile(r"Ascend\d\w*")


@dataclass(frozen=True)
class Settings:
    """Every ``--bm-*`` option after validation; the field defaults are the plugin's defaults."""

    model: str = "lite"
    weights: Path | None = None  # None: shipped weights of lite, else random init (seed 0)
    targets: tuple[Target, ...] = ()  # empty: auto-selected on first use
    reference: Target = parse_target("cpu")
    thresholds: Path | None = None  # None: the packaged default thresholds
    input_size: tuple[int, int] | None = None  # (H, W); None: the model config's square size
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    report_dir: Path = Path("reports")
    dump_dir: Path | None = None  # None: no tensor dumps written
    dump_mode: str = "full"  # full: tensors and statistics; stats: statistics only
    devices: tuple[str, ...] = ()  # one per xdist worker
    soc_version: str = "Ascend910B"
    require: tuple[str, ...] = ()  # families/devices whose skips fail the session
    perf_grid: str = "quick"  # quick: CI's 3-minute grid; full: the hardware run
    deform_conv: str = "auto"  # which deformable convolution eager targets run (ops/selection.py)
    dataset: CocoDataset | None = None  # None: synthetic shapes; else the checked --bm-dataset
    dataset_limit: int | None = DATASET_LIMIT  # evaluation images of --bm-dataset; None: all
    reference_cache: str = "reuse"  # one of REFERENCE_CACHE_MODES (run_cache.py)


DEFAULTS = Settings()


def _one_of(text: str, choices: Sequence[str]) -> str:
    """``text`` without surrounding blanks, when it is one of ``choices``."""
    name = text.strip()
    if name not in choices:
        listed = " or ".join(choices) if len(choices) == 2 else ", ".join(choices)
        raise ValueError(f"expected {listed}; got {text!r}")
    return name


def parse_model(text: str) -> str:
    """A config name, or ``module:factory`` whose module can be found."""
    name = text.strip()
    if name in MODEL_NAMES:
        return name
    expected = f"one of {', '.join(MODEL_NAMES)} or module:factory"
    match = _FACTORY_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"expected {expected}; got {text!r}")
    try:
        found = importlib.util.find_spec(match["module"]) is not None
    except ImportError:  # a parent package of a dotted module is missing
        found = False
    if not found:
        raise ValueError(f"expected {expected}; got {text!r} (module {match['module']!r} not found)")
    return name


def parse_existing_file(text: str, base: Path) -> Path:
    """A path (relative to ``base``) that names an existing file."""
    path = base / Path(text.strip()).expanduser()
    if not path.is_file():
        raise ValueError(f"expected an existing file; got {text!r} ({path} does not exist)")
    return path


def parse_dir(text: str, base: Path) -> Path:
    """A directory path relative to ``base``; it is created when something is written."""
    if not text.strip():
        raise ValueError(f"expected a directory path; got {text!r}")
    return base / Path(text.strip()).expanduser()


def parse_input_size(text: str) -> tuple[int, int]:
    """``S`` or ``HxW``, each a positive multiple of 32, as (H, W)."""
    parts = text.strip().lower().split("x")
    expected = f"S or HxW with each side a positive multiple of {SIZE_DIVISOR}"
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected {expected}; got {text!r}")
    sides = [int(p) for p in parts]
    if any(s <= 0 or s % SIZE_DIVISOR for s in sides):
        raise ValueError(f"expected {expected}; got {text!r}")
    return (sides[0], sides[-1])


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """A comma-separated list of distinct positive integers."""
    parts = [p.strip() for p in text.split(",")]
    expected = "a comma-separated list of distinct positive integers such as 1,2,4,8,16"
    if not all(p.isdigit() and int(p) > 0 for p in parts) or len(set(map(int, parts))) != len(parts):
        raise ValueError(f"expected {expected}; got {text!r}")
    return tuple(int(p) for p in parts)


def parse_dump_mode(text: str) -> str:
    """One of ``DUMP_MODES``."""
    return _one_of(text, DUMP_MODES)


def parse_devices(text: str) -> tuple[str, ...]:
    """A comma-separated list of device specs (cpu, cuda:N, npu:N)."""
    try:
        return tuple(parse_device(p) for p in text.split(","))
    except ValueError as exc:
        raise ValueError(f"{exc} in {text!r}") from None


def parse_targets(specs: Sequence[str]) -> tuple[Target, ...]:
    """Target specs from a repeated flag or an ini line list."""
    return tuple(parse_target(spec) for spec in specs)


def parse_soc_version(text: str) -> str:
    """An ATC ``--soc_version`` name."""
    name = text.strip()
    if not _SOC_RE.fullmatch(name):
        raise ValueError(
            f"expected an ATC --soc_version such as Ascend910B3 or Ascend310P3 "
            f"(`npu-smi info` shows the chip); got {text!r}"
        )
    return name


def parse_require(text: str) -> tuple[str, ...]:
    """A comma-separated list of families and device types; empty means nothing is required."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in REQUIRE_TAGS]
    if unknown:
        raise ValueError(f"expected a comma-separated list of {', '.join(REQUIRE_TAGS)}; got {text!r}")
    return tuple(dict.fromkeys(names))


def parse_perf_grid(text: str) -> str:
    """The name of a perf grid (``pytest_blendmask.perf.grid``)."""
    return _one_of(text, GRID_NAMES)


def parse_reference_cache(text: str) -> str:
    """One of ``REFERENCE_CACHE_MODES``."""
    return _one_of(text, REFERENCE_CACHE_MODES)


def parse_deform_conv(text: str) -> str:
    """One of ``DEFORM_CONV_MODES``."""
    return _one_of(text, DEFORM_CONV_MODES)


def parse_dataset(text: str, base: Path) -> CocoDataset:
    """A COCO-format dataset (``data/dataset.py``), loaded and checked: its errors name the file and the fix."""
    from pytest_blendmask.data.dataset import load_dataset  # imports torch: only when a dataset is given

    if not text.strip():
        raise ValueError(f"expected a COCO annotation JSON or a folder holding annotations.json and images/; got {text!r}")
    return load_dataset(base / Path(text.strip()).expanduser())


def parse_dataset_limit(text: str) -> int | None:
    """A positive number of evaluation images, or ``all`` (None)."""
    name = text.strip().lower()
    if name == "all":
        return None
    if not name.isdigit() or int(name) <= 0:
        raise ValueError(f"expected a positive number of images or all; got {text!r}")
    return int(name)


@dataclass(frozen=True)
class Option:
    """One ``--bm-<name>`` flag, its ``bm_<name>`` ini key, and how its value is parsed."""

    name: str
    help: str
    parse: Callable[..., Any]
    metavar: str
    takes_base: bool = False  # parse(value, base_dir): relative paths need an anchor
    repeat: bool = False  # the flag may be given several times; ini type linelist

    @property
    def flag(self) -> str:
        return f"--bm-{self.name}"

    @property
    def ini(self) -> str:
        return f"bm_{self.name.replace('-', '_')}"

    @property
    def field(self) -> str:
        """The ``Settings`` field (and argparse dest) this option fills."""
        return {"target": "targets"}.get(self.name, self.name.replace("-", "_"))


OPTIONS = (
    Option("model", "BlendMask config (lite, R_50, R_101, R_101_dcni3, 550_R_50_3x, "
           "RT_R_50_4x_bn-head_syncbn_shtw) or module:factory "
           "returning a BlendMask-compatible model.", parse_model, metavar="NAME"),
    Option("weights", "Weights file (.safetensors or AdelaiDet .pth). "
           "Default: the shipped weights of lite, else random init (seed 0).",
           parse_existing_file, takes_base=True, metavar="PATH"),
    Option("target", f"Target under test, may repeat: {TARGET_FORMS}. "
           "Default: npu:0, else cuda:0, else cpu:fp16; plus ort.",
           parse_targets, repeat=True, metavar="SPEC"),
    Option("reference", "Golden reference target (same forms as --bm-target).", parse_target,
           metavar="SPEC"),
    Option("thresholds", "Thresholds TOML file. Default: the packaged thresholds.",
           parse_existing_file, takes_base=True, metavar="PATH"),
    Option("input-size", "Input size S or HxW (multiples of 32). Default: the model config's size.",
           parse_input_size, metavar="SIZE"),
    Option("batch-sizes", "Comma-separated batch sizes for perf tests.", parse_batch_sizes,
           metavar="N,N,..."),
    Option("report-dir", "Directory for FINAL_REPORT.json/.md and plots.", parse_dir,
           takes_base=True, metavar="DIR"),
    Option("dump-dir", "Directory for per-layer tensor dumps. Default: no dumps.",
           parse_dir, takes_base=True, metavar="DIR"),
    Option("dump-mode", "What --bm-dump-dir and dump_collector keep: full (every tensor, in its "
           "dtype, and its statistics) or stats (max/min/mean/L2 norm only: no tensor on disk or "
           "held by the dump, for big models).", parse_dump_mode, metavar="full|stats"),
    Option("devices", "Comma-separated devices, one per xdist worker (e.g. npu:0,npu:1).",
           parse_devices, metavar="DEV,DEV,..."),
    Option("soc-version", "ATC --soc_version of the target chip.", parse_soc_version,
           metavar="SOC"),
    Option("require", f"Comma-separated families/devices ({', '.join(REQUIRE_TAGS)}) that must run: "
           "a skip among their tests, or none of them running, fails the session.", parse_require,
           metavar="TAG,TAG,..."),
    Option("perf-grid", "Perf grid: quick (CI, <= 3 min on 2 CPU cores) or full (every batch size, "
           "512 and 640, fp32/fp16/bf16; for hardware).", parse_perf_grid, metavar="quick|full"),
    Option("deform-conv", "Deformable convolution of eager targets: auto (torchvision's kernel "
           "unless a probe finds it samples inexactly on the device/dtype, then the pure-PyTorch "
           "fallback), torchvision, or fallback (what a port without a kernel runs).",
           parse_deform_conv, metavar="auto|torchvision|fallback"),
    Option("dataset", "COCO-format dataset: an annotation JSON (images in images/ beside it, or COCO's "
           "<root>/<split>/ for <root>/annotations/instances_<split>.json, or beside it) or a folder holding "
           "annotations.json and images/. Its first 8 images (by id) calibrate int8 targets, the rest are "
           "evaluated (sample batch, detection and AP levels). Default: synthetic shapes.",
           parse_dataset, takes_base=True, metavar="PATH"),
    Option("dataset-limit", "Evaluation images of --bm-dataset (after its calibration images): a positive "
           "number or all.", parse_dataset_limit, metavar="N|all"),
    Option("reference-cache", "The reference's results (runs, detections, AP, noise floors) kept in "
           "$BM_CACHE_DIR/reference (else .bm_cache/reference): reuse loads what an earlier run with the same "
           "model, weights, code, inputs and settings stored; recompute ignores it, computes again and overwrites "
           "it.", parse_reference_cache, metavar="reuse|recompute"),
)

OPTIONS_BY_FIELD = {option.field: option for option in OPTIONS}


def _default_text(value: Any) -> str | None:
    if value is None or value == ():
        return None
    if isinstance(value, Target):
        return value.id
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def option_help(option: Option) -> str:
    """Help text ending in the real default, taken from ``Settings``."""
    default = _default_text(getattr(DEFAULTS, option.field))
    return option.help if default is None else f"{option.help} Default: {default!r}"


def _raw_value(config: pytest.Config, option: Option) -> tuple[Any, str, Path] | None:
    """(value, where it came from, base dir for relative paths), or None when not set."""
    cli = config.getoption(option.field)
    if cli is not None:
        return cli, f"from command line; ini key {option.ini}", config.invocation_params.dir
    ini = config.getini(option.ini)
    # An empty linelist means the key is absent or empty: both mean "use the default".
    if ini is None or (option.repeat and not ini):
        return None
    base = config.inipath.parent if config.inipath else config.rootpath
    return ini, f"from ini {option.ini}", base


def resolve_settings(config: pytest.Config) -> Settings:
    """Read and validate every option; raise ``pytest.UsageError`` on the first bad value."""
    # Relative defaults are anchored at the rootdir, not at wherever pytest was started.
    values: dict[str, Any] = {"report_dir": config.rootpath / DEFAULTS.report_dir}
    for option in OPTIONS:
        raw = _raw_value(config, option)
        if raw is None:
            continue
        value, source, base = raw
        try:
            values[option.field] = option.parse(value, base) if option.takes_base else option.parse(value)
        except ValueError as exc:
            raise pytest.UsageError(f"{option.flag}: {exc} ({source})") from None
    settings = Settings(**values)
    if "dataset_limit" in values and settings.dataset is None:
        limit, dataset = OPTIONS_BY_FIELD["dataset_limit"], OPTIONS_BY_FIELD["dataset"]
        raise pytest.UsageError(f"{limit.flag}: applies to {dataset.flag} only; give {dataset.flag} PATH "
                                f"(or ini {dataset.ini}), or drop {limit.flag} (ini {limit.ini})")
    if settings.model not in MODEL_NAMES and settings.input_size is None:
        # A user's factory has no config to take the default size from.
        size, model = OPTIONS_BY_FIELD["input_size"], OPTIONS_BY_FIELD["model"]
        raise pytest.UsageError(
            f"{size.flag}: required with {model.flag} {settings.model!r} (a module:factory "
            f"model has no default size); give S or HxW, e.g. {size.flag} 640 (or ini {size.ini})"
        )
    return settings


def packaged_file(name: str) -> Path | None:
    """A data file shipped inside the package, if this installation has it."""
    path = importlib.resources.files("pytest_blendmask").joinpath(name)
    return Path(str(path)) if path.is_file() else None


def weights_path(settings: Settings) -> Path | None:
    """The weights the session loads: --bm-weights, else the shipped ones, else None (random)."""
    return settings.weights or packaged_file(f"weights/{settings.model}.safetensors")


def thresholds_path(settings: Settings) -> Path | None:
    """The thresholds file: --bm-thresholds, else the packaged default, else None."""
    return settings.thresholds or packaged_file(THRESHOLDS_FILE)


def resolve_thresholds(settings: Settings) -> Thresholds:
    """The validated thresholds of the session; a bad file is a usage error naming file and key."""
    try:
        return load_thresholds(settings.thresholds)
    except ThresholdsError as exc:
        raise pytest.UsageError(f"--bm-thresholds: {exc}") from None


def check_model_factory(settings: Settings) -> Any:
    """A ``module:factory`` model, built and run once on a zero batch; None for a named config.

    Named configs are known to work; a user's factory is checked at session start so that a
    model the gate cannot call stops the run with a usage error saying why, instead of
    erroring every test. The session then uses the model built here.
    """
    if settings.model in MODEL_NAMES:
        return None
    from pytest_blendmask.model import ModelProtocolError, build_model, probe

    assert settings.input_size is not None  # resolve_settings requires it with a factory
    flag = OPTIONS_BY_FIELD["model"].flag
    try:
        model = build_model(settings.model, seed=SEED)
        probe(model, settings.input_size, settings.model)
    except ModelProtocolError as exc:
        raise pytest.UsageError(f"{flag}: {exc}") from None
    return model


def check_dataset_classes(settings: Settings, factory_model: Any) -> tuple[int, ...] | None:
    """The category id of each model class for --bm-dataset (``data.dataset.class_map``); None
    without a dataset, or for a model without ``class_names`` (its detection and AP levels skip).

    At session start, like ``check_model_factory``: a dataset whose classes are not the model's
    is a usage error naming both.
    """
    if settings.dataset is None:
        return None
    from pytest_blendmask.data.dataset import DatasetError, class_map

    if factory_model is None:
        from pytest_blendmask.model.configs import get_config

        config = get_config(settings.model)
        names, ids = config.class_names, config.category_ids
    elif hasattr(factory_model, "class_names"):
        names, ids = factory_model.class_names, getattr(factory_model, "category_ids", None)
    else:
        return None
    try:
        return class_map(settings.dataset, names, ids)
    except DatasetError as exc:
        raise pytest.UsageError(f"{OPTIONS_BY_FIELD['dataset'].flag}: {exc}") from None


def describe_settings(settings: Settings) -> list[str]:
    """Report-header lines for the model, its weights, the reference and the thresholds."""
    weights = weights_path(settings)
    thresholds = thresholds_path(settings)
    size = "x".join(map(str, settings.input_size)) if settings.input_size else "config default"
    no_weights = f"random init (seed {SEED}): no --bm-weights and no shipped weights for {settings.model}"
    no_thresholds = f"none: no --bm-thresholds and no packaged {THRESHOLDS_FILE}"
    return [
        f"model: {settings.model}, input {size}",
        f"weights: {weights or no_weights}",
        f"reference: {settings.reference.id}",
        f"thresholds: {thresholds or no_thresholds}",
        f"data: {describe_dataset(settings)}",
        f"reference cache: {reference_dir()} ({settings.reference_cache})",
    ]


def describe_dataset(settings: Settings) -> str:
    """What the sample batch, the detection and AP levels and int8 calibration run on."""
    if settings.dataset is None:
        return "synthetic shapes (give --bm-dataset PATH for a COCO-format set)"
    calibration, evaluation = settings.dataset.split(settings.dataset_limit)
    return (f"{settings.dataset.annotations} ({len(settings.dataset.images)} images in {settings.dataset.image_dir}: "
            f"{len(calibration)} calibrate, {len(evaluation)} evaluated)")

"""pytest hooks of pytest-blendmask: options, markers, target parametrization, report header, reports.

The hooks only switch: parsing lives in ``settings``, targets in ``targets``, fixtures in
``fixtures`` (a second ``pytest11`` entry point), worker pinning and tags in ``placement``,
the reports in ``report`` (its controller is a plugin object registered at session start,
with the environment captured then, once). torch is never imported at module level.
"""
from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_blendmask.cache_dir import remove_session_dir
from pytest_blendmask.environment import collect_environment, environment_at_end
from pytest_blendmask.fixtures import chosen_targets, class_map_key, factory_model_key, settings_key, thresholds_key
from pytest_blendmask.placement import group_perf_items, idle_threads_sleep_in_workers, run_id, steal_work_when_idle, tag_items
from pytest_blendmask.report.controller import ReportContext, register_controller, register_html_hooks
from pytest_blendmask.report.termination import interrupt_on_sigterm
from pytest_blendmask.settings import (
    OPTIONS,
    check_dataset_classes,
    check_model_factory,
    describe_settings,
    option_help,
    resolve_settings,
    resolve_thresholds,
)
from pytest_blendmask.targets import describe_targets, parse_target

MARKERS = {
    "precision": "compares a target with the reference (tensors, detections, COCO AP)",
    "perf": "times a target with pytest-benchmark (latency, throughput, memory)",
    "atc": "ONNX export, offline compilation (atc or ONNX Runtime) and compiled-model parity",
    "npu": "needs an Ascend NPU (torch_npu); skipped with the probe's reason where there is none",
    "cuda": "needs a CUDA GPU; skipped with the reason where there is none",
    "slow": "takes more than a few seconds on a 2-core CPU",
    "bm_level": "its argument names the acceptance level the test judges, its column in the report's scorecard "
                "(operators, tensor, detection, AP, perf, ATC); default: its family's",
}

# The device a marker asks for, checked before the test runs.
_MARKER_TARGETS = {"npu": parse_target("npu:0"), "cuda": parse_target("cuda:0")}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("blendmask", "BlendMask acceptance (pytest-blendmask)")
    for option in OPTIONS:
        parser.addini(
            option.ini,
            f"Default for {option.flag}.",
            type="linelist" if option.repeat else "string",
            default=None,
        )
        group.addoption(
            option.flag,
            action="append" if option.repeat else "store",
            dest=option.field,
            default=None,  # None means "not given": the ini value or the Settings default applies
            metavar=option.metavar,
            help=option_help(option),
        )


@pytest.hookimpl(wrapper=True)  # a wrapper runs before every implementation, xdist's tryfirst one included
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, object, object]:
    steal_work_when_idle(config)
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.stash[settings_key] = resolve_settings(config)
    config.stash[thresholds_key] = resolve_thresholds(config.stash[settings_key])
    register_html_hooks(config)
    interrupt_on_sigterm(config)
    run_id(config)  # before xdist starts its workers: they get this id (placement.run_id)
    idle_threads_sleep_in_workers(config)  # and this environment


def pytest_sessionstart(session: pytest.Session) -> None:
    # At session start rather than configure time: `pytest --help` and `--markers` configure
    # too, and must not import torch_npu or hash the weights for a report nobody writes.
    config = session.config
    factory_model = check_model_factory(config.stash[settings_key])
    if factory_model is not None:
        config.stash[factory_model_key] = factory_model
    config.stash[class_map_key] = check_dataset_classes(config.stash[settings_key], factory_model)
    if hasattr(config, "workerinput") or config.option.collectonly:
        return  # workers forward their reports to the controller; --collect-only writes no report
    from pytest_blendmask.perf.timing import host_conditions  # imports torch

    settings = config.stash[settings_key]
    context = ReportContext(
        report_dir=settings.report_dir,
        required=settings.require,
        environment=collect_environment(config, settings, chosen_targets(config)),
        perf_context={"grid": settings.perf_grid, "host": host_conditions()},
        environment_at_end=lambda: environment_at_end(run_id(config), settings),
    )
    register_controller(config, context)


@pytest.hookimpl(trylast=True)  # after the report controller has read the session's cache log
def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or the one process without xdist
        remove_session_dir(run_id(session.config))


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[settings_key]
    lines = describe_settings(settings) + describe_targets(chosen_targets(config), auto=not settings.targets)
    return [f"blendmask {line}" for line in lines]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dut_target" in metafunc.fixturenames:
        targets = chosen_targets(metafunc.config)
        metafunc.parametrize("dut_target", targets, ids=[t.id for t in targets], indirect=True)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker appends the xdist_group to the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tag_items(items)
    group_perf_items(config, items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, target in _MARKER_TARGETS.items():
        if item.get_closest_marker(marker) is not None:
            reason = target.skip_reason()
            if reason is not None:
                pytest.skip(reason)

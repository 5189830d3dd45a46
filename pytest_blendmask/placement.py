"""Where a test runs: the device pinned to each xdist worker, perf groups, the tags ``--bm-require`` checks,
and the id that all workers of one session share.

``--bm-devices npu:0,npu:1`` with ``-n N`` pins worker ``gwK`` to ``devices[K % len]``;
without xdist the session is worker 0. Eager targets of that device's type run on the
pinned device (the test id keeps the spec given, so every worker collects the same ids).

Tags, the test's acceptance level and its target are computed at collection and stored in
the item's ``user_properties`` so that they reach the xdist controller with every report,
skips included.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import pytest

from pytest_blendmask.results import LEVEL_KEY, LEVELS, TAGS_KEY, TARGET_KEY
from pytest_blendmask.settings import REQUIRE_TAGS, Settings
from pytest_blendmask.targets import Target

_run_key = pytest.StashKey[str]()
PERF_MARKER = "perf"
LEVEL_MARKER = "bm_level"
# The level of a test without a bm_level marker: its family's. A precision test of a user's
# own has no finer level the report could know, so it gets a column of its own.
_FAMILY_LEVELS = {"perf": "perf", "atc": "ATC", "precision": "precision"}
_NO_TARGET_DEVICE = "cpu"  # a test without a dut_target runs on the CPU


def worker_index(worker_id: str | None) -> int:
    """0 for ``gw0`` or no xdist, K for ``gwK``."""
    return int(worker_id[2:]) if worker_id and worker_id.startswith("gw") else 0


def device_for_worker(devices: Sequence[str], worker_id: str | None) -> str | None:
    """The device of ``--bm-devices`` this worker is pinned to; None when none were given."""
    return devices[worker_index(worker_id) % len(devices)] if devices else None


def worker_device(config: pytest.Config, settings: Settings) -> str | None:
    """``device_for_worker`` for this process (xdist tells a worker its id in ``workerinput``)."""
    return device_for_worker(settings.devices, getattr(config, "workerinput", {}).get("workerid"))


def run_id(config: pytest.Config) -> str:
    """An id of this session that every xdist worker of it and the controller share (xdist's
    ``testrunuid``); without xdist, one made for the session.

    In the controller the id is made here (or taken from ``--testrunuid``) and handed to xdist
    as its ``--testrunuid``, which it sends to each worker: called before xdist starts them
    (``pytest_configure``), the controller and its workers name the same session.
    """
    shared = getattr(config, "workerinput", {}).get("testrunuid")
    if shared is not None:
        return shared
    if _run_key not in config.stash:
        config.stash[_run_key] = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
        if hasattr(config.option, "testrunuid"):  # xdist is loaded
            config.option.testrunuid = config.stash[_run_key]
    return config.stash[_run_key]


def idle_threads_sleep_in_workers(config: pytest.Config) -> None:
    """In an xdist controller about to start workers, ``OMP_WAIT_POLICY=PASSIVE`` for them, unless set.

    Each worker's OpenMP threads spin for a while after every parallel region by default;
    with several workers on the cores of one host, the spinning threads of one take the cores
    the other computes on (``pytest -n 2 -m precision`` took 1.45x the serial time here, 1.15x
    with idle threads sleeping). Called before xdist spawns the workers, which inherit it.
    """
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def steal_work_when_idle(config: pytest.Config) -> None:
    """``-n N`` without a ``--dist`` mode: ``--dist worksteal`` instead of xdist's ``load``.

    The acceptance tests' durations are uneven: one AP test takes half of ``-m precision``,
    and under ``load`` the tests queued behind it waited while the other worker sat idle for
    its last 31 s (``pytest -n 2 -m precision``: 1.16-1.26x the serial time run in pairs; 0.93x
    and 1.03x with worksteal, which hands an idle worker the tests queued on a busy one). Runs before
    xdist's own ``pytest_cmdline_main`` picks ``load``; a ``--dist`` given is kept.
    """
    option = config.option
    if getattr(option, "numprocesses", None) and getattr(option, "dist", None) == "no" and not getattr(option, "distload", False):
        option.dist = "worksteal"


def _item_target(item: pytest.Item) -> Target | None:
    """The target the item runs: its ``dut_target`` parameter (the spec given, before any
    pinning), else the target of its perf ``grid_point`` parameter."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    spec = callspec.params.get("dut_target")
    if isinstance(spec, Target):
        return spec
    spec = getattr(callspec.params.get("grid_point"), "target", None)
    return spec if isinstance(spec, Target) else None


def item_target_id(item: pytest.Item) -> str | None:
    """The id of the target the item judges: ``_item_target``'s, else its ``gate_target``
    parameter (a perf floor test is parametrized by the target ids its grid measured)."""
    spec = _item_target(item)
    if spec is not None:
        return spec.id
    gate_target = getattr(getattr(item, "callspec", None), "params", {}).get("gate_target")
    return gate_target if isinstance(gate_target, str) else None


def item_device(item: pytest.Item) -> str:
    """The device of the item's target (``_item_target``), else the CPU."""
    spec = _item_target(item)
    return spec.device if spec is not None else _NO_TARGET_DEVICE


def item_tags(item: pytest.Item) -> list[str]:
    """The families (markers) and device types this test belongs to, for ``--bm-require``."""
    tags = {mark.name for mark in item.iter_markers() if mark.name in REQUIRE_TAGS}
    spec = _item_target(item)
    if spec is not None:
        tags.add(spec.device.split(":")[0])
    if "npu_device" in getattr(item, "fixturenames", ()):
        tags.add("npu")
    return sorted(tags)


def item_level(item: pytest.Item) -> str | None:
    """The acceptance level the test judges: its ``bm_level`` marker, else its family's; None for neither.

    Raises:
        pytest.UsageError: a ``bm_level`` marker naming no level of ``results.LEVELS``.
    """
    marker = item.get_closest_marker(LEVEL_MARKER)
    if marker is not None:
        level = marker.args[0] if marker.args else None
        if level not in LEVELS:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.{LEVEL_MARKER} expects one of {', '.join(LEVELS)}; got {level!r}")
        return level
    return next((_FAMILY_LEVELS[m.name] for m in item.iter_markers() if m.name in _FAMILY_LEVELS), None)


def tag_items(items: Sequence[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Item):  # pytester's getnode() passes collectors here
            item.user_properties.append((TAGS_KEY, item_tags(item)))
            item.user_properties.append((LEVEL_KEY, item_level(item)))
            item.user_properties.append((TARGET_KEY, item_target_id(item)))


def group_perf_items(config: pytest.Config, items: Sequence[pytest.Item]) -> None:
    """Under ``--dist loadgroup``, send all perf tests of one device to one worker, one after another."""
    if getattr(config.option, "dist", "no") != "loadgroup":
        return
    for item in items:
        if item.get_closest_marker(PERF_MARKER) is not None:
            item.add_marker(pytest.mark.xdist_group(name=item_device(item)))

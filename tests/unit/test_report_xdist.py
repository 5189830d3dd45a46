"""pytest-xdist: records reach the controller unchanged, workers are pinned to devices, perf tests are grouped."""
from __future__ import annotations

import json

import pytest

from pytest_blendmask.placement import device_for_worker, group_perf_items, item_tags, worker_index
from pytest_blendmask.targets import parse_target
from tests.unit.report_support import RECORDING_PROJECT, all_records, assert_valid, final_report


def _canonical(report: dict) -> dict:
    """What must not depend on how the run was distributed, with order removed."""
    return {
        "records": sorted(json.dumps(r, sort_keys=True) for r in all_records(report)),
        "skips": sorted(json.dumps(s, sort_keys=True) for s in report["skips"]),
        "counts": report["counts"],
        "verdict": report["verdict"],
        "scorecard": report["scorecard"],  # records sorted by test: the same indices either way
    }


def test_records_of_an_xdist_run_equal_those_of_a_serial_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(RECORDING_PROJECT)
    # Subprocesses: xdist workers are separate interpreters anyway, and an in-process run
    # cannot host the controller's execnet gateways cleanly.
    serial = pytester.runpytest_subprocess("--bm-target=cpu", "-p", "no:cacheprovider")
    serial.assert_outcomes(passed=7, failed=1, skipped=1)
    serial_report = final_report(pytester)
    distributed = pytester.runpytest_subprocess("--bm-target=cpu", "-p", "no:cacheprovider", "-p", "xdist", "-n", "2")
    distributed.stdout.fnmatch_lines(["created: 2/2 workers"])
    distributed.assert_outcomes(passed=7, failed=1, skipped=1)
    distributed_report = final_report(pytester)
    assert_valid(distributed_report)
    assert distributed_report["environment"]["xdist_workers"] == 2
    assert len(all_records(distributed_report)) == 10
    assert _canonical(distributed_report) == _canonical(serial_report)


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_xdist_workers_let_idle_openmp_threads_sleep_unless_told_otherwise(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, given: str | None,
) -> None:
    if given is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # an outer xdist run of this suite sets it
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", given)
    pytester.makepyfile(f"""
        import os

        def test_policy():
            assert os.environ.get("OMP_WAIT_POLICY") == {given or "PASSIVE"!r}
            assert os.environ.get("PYTEST_XDIST_WORKER")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(("given", "expected"), [([], "worksteal"), (["--dist", "load"], "load"), (["-d", "--tx", "popen"], "load")])
def test_xdist_steals_work_for_idle_workers_unless_a_dist_mode_is_given(
    pytester: pytest.Pytester, given: list[str], expected: str,
) -> None:
    pytester.makeconftest("""
        def pytest_configure(config):
            if not hasattr(config, "workerinput"):  # the controller: workers do not get the mode
                print("dist mode:", config.option.dist)
    """)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "xdist", "-n", "2", "-s", *given)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"dist mode: {expected}"])


@pytest.mark.parametrize(
    ("devices", "worker_id", "expected"),
    [(("npu:0", "npu:1"), "gw0", "npu:0"), (("npu:0", "npu:1"), "gw3", "npu:1"), (("npu:0", "npu:1"), None, "npu:0"),
     (("npu:5",), "gw2", "npu:5"), ((), "gw1", None)],
)
def test_device_for_worker_cycles_through_the_devices(devices: tuple[str, ...], worker_id: str | None, expected: str | None) -> None:
    assert device_for_worker(devices, worker_id) == expected


def test_worker_index() -> None:
    assert [worker_index(w) for w in ("gw0", "gw12", None, "master")] == [0, 12, 0, 0]


@pytest.mark.parametrize(
    ("spec", "device", "expected"),
    [("npu:0:fp16", "npu:3", "npu:3:fp16"), ("npu:0", None, "npu:0"), ("cpu:fp16", "npu:1", "cpu:fp16"),
     ("cuda:0", "npu:1", "cuda:0"), ("ort:cann", "npu:1", "ort:cann"), ("om", "npu:1", "om")],
)
def test_pin_target_moves_eager_targets_of_the_same_type(spec: str, device: str | None, expected: str) -> None:
    assert parse_target(spec).pinned(device).id == expected


@pytest.mark.parametrize(("spec", "device"), [("cpu:bf16", "cpu"), ("npu:2", "npu:2"), ("ort", "cpu"),
                                              ("ort:cann", "npu:0"), ("ort:cuda", "cuda:0"), ("om", "npu:0")])
def test_device_of_a_target(spec: str, device: str) -> None:
    assert parse_target(spec).device == device


def test_bm_worker_device_and_dut_target_follow_bm_devices(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        import pytest_blendmask.targets

        @pytest.fixture(autouse=True)
        def npu_present(monkeypatch):
            for kind in pytest_blendmask.targets.KINDS:
                monkeypatch.setattr(kind, "skip_reason", lambda self, need="run": None)

        def test_pinned(bm_worker_device, dut_target, request):
            assert bm_worker_device == "npu:1"
            assert request.node.callspec.id == "npu:0:fp16"  # the id every worker agrees on
            assert dut_target.id == "npu:1:fp16"
        """
    )
    pytester.runpytest("--bm-devices=npu:1", "--bm-target=npu:0:fp16").assert_outcomes(passed=1)


def test_perf_items_are_grouped_by_device_under_loadgroup(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_target =\n    npu:0\n    ort:cann\n")
    items = pytester.getitems(
        """
        import pytest
        from pytest_blendmask.perf.grid import GridPoint

        @pytest.mark.perf
        def test_latency(dut_target):
            pass

        @pytest.mark.perf
        def test_cpu_benchmark():
            pass

        @pytest.mark.perf
        @pytest.mark.parametrize("grid_point", [GridPoint("cuda:1", 1, (64, 64), "fp16", "bn", "streams")], ids=["p"])
        def test_grid(grid_point):
            pass

        @pytest.mark.precision
        def test_parity(dut_target):
            pass
        """
    )
    config = items[0].config
    group_perf_items(config, items)
    assert [m.kwargs for i in items for m in i.iter_markers("xdist_group")] == []  # not under --dist load
    config.option.dist = "loadgroup"
    group_perf_items(config, items)
    groups = {i.name: [m.kwargs["name"] for m in i.iter_markers("xdist_group")] for i in items}
    assert groups == {"test_latency[npu:0]": ["npu:0"], "test_latency[ort:cann]": ["npu:0"], "test_cpu_benchmark": ["cpu"],
                      "test_grid[p]": ["cuda:1"], "test_parity[npu:0]": [], "test_parity[ort:cann]": []}
    assert item_tags(next(i for i in items if i.name == "test_grid[p]")) == ["cuda", "perf"]


def test_items_are_tagged_with_family_and_device(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nbm_target =\n    om\n    cpu\n")
    items = pytester.getitems(
        """
        import pytest

        @pytest.mark.atc
        def test_om(dut_target):
            pass

        @pytest.mark.perf
        @pytest.mark.npu
        def test_npu_marker():
            pass

        def test_npu_fixture(npu_device):
            pass
        """
    )
    assert {i.name: item_tags(i) for i in items} == {
        "test_om[om]": ["atc", "npu"], "test_om[cpu]": ["atc", "cpu"],
        "test_npu_marker": ["npu", "perf"], "test_npu_fixture": ["npu"],
    }

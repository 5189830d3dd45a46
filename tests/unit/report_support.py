"""Shared pieces of the report tests: a small recording test project and the report's schema check."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_blendmask.report.final import JSON_NAME, SCHEMA_FILE

# Records in every family, a per-layer series, a NaN, a skip with its reason and a failing
# gate: the shapes a real run produces, without building the model.
RECORDING_PROJECT = '''
import math
import pytest
from pytest_blendmask.report import batch_series, layer_series

@pytest.mark.precision
@pytest.mark.parametrize("target", ["cpu:fp16", "cpu:bf16"])
def test_layer_error(bm_record, target):
    names = ["backbone.stem", "backbone.res2", "fpn.p3", "head.cls#0"]
    values = [1e-4, 3e-4, 2e-3, 4e-3]
    bm_record("precision", target, "relative_l2_error", max(values), 0.1, "", True, op="<=",
              detail="worst layer head.cls#0", per_layer=layer_series(names, values, None))
    bm_record("precision", target, "cosine_similarity", 0.9999, 0.99, "", True, op=">=")

@pytest.mark.precision
def test_kl_is_nan(bm_record):
    bm_record("precision", "cpu:fp16", "kl_divergence", math.nan, None, "", True)

@pytest.mark.perf
@pytest.mark.parametrize("batch", [1, 2, 4])
def test_latency(bm_record, batch):
    bm_record("perf", "cpu:fp16", "latency_p50", 10.0 * batch, 100.0, "ms", True, op="<=", batch_size=batch)

@pytest.mark.perf
def test_sweep(bm_record):
    bm_record("perf", "ort", "latency_p50", 9.5, None, "ms", True, per_batch=batch_series([1, 2], [9.5, 15.0]))

@pytest.mark.atc
def test_atc_parity(bm_record):
    bm_record("atc", "ort", "box_max_abs_error", 0.5, 0.1, "px", False, op="<=", detail="box error 0.5 px > 0.1 px")

@pytest.mark.atc
def test_om_compile():
    pytest.skip("`atc` not on PATH")
'''


def final_report(pytester: pytest.Pytester) -> dict[str, Any]:
    """The FINAL_REPORT.json the last run in ``pytester.path`` wrote (default --bm-report-dir)."""
    return json.loads((pytester.path / "reports" / JSON_NAME).read_text(encoding="utf-8"))


def assert_valid(report: dict[str, Any]) -> None:
    """Validate against the packaged schema (itself checked against the 2020-12 metaschema)."""
    schema = json.loads(Path(SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(report)


def all_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for family in report["records"].values() for r in family]

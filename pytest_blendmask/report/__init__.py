"""Reports built from the tests' recorded verdicts: FINAL_REPORT.json/.md and the pytest-html content.

Gates record through :func:`record` (or the ``bm_record`` fixture); everything else here
reads those records back from the test reports (see STYLE.md section 7).
"""
from pytest_blendmask.results import FAMILIES, batch_series, layer_series, record

__all__ = ["FAMILIES", "batch_series", "layer_series", "record"]

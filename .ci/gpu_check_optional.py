"""pytest plugin for .ci/gpu-check: a missing OPTIONAL package skips, it does not fail.

The GPU machine may lack the optional extras (scikit-learn, matplotlib, scipy,
cvxpy, highspy, distributed). A test module that imports one at module level
would fail to collect, and a test that imports one inside would error, although
neither is a CUDA problem. This plugin turns exactly those cases, an import
error naming one of OPTIONAL or manifold_ext's MissingOptionalDependency, into
skips that name the package; every other error still fails. hypothesis is not
optional here: python_tests/conftest.py imports it (gpu-check installs it from
a wheel folder when it is missing).
"""

from __future__ import annotations

import re

import pytest

OPTIONAL = {"sklearn", "matplotlib", "scipy", "cvxpy", "highspy", "distributed"}
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_MISSING_EXTRA = re.compile(r"MissingOptionalDependency: (.*)")


def _missing_optional(text: str) -> str | None:
    match = _NO_MODULE.search(text)
    if match and match.group(1).split(".")[0] in OPTIONAL:
        return f"needs the optional package {match.group(1)} (not installed on this machine)"
    match = _MISSING_EXTRA.search(text)
    if match:
        return match.group(1).strip()
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        reason = _missing_optional(str(report.longrepr))
        if reason:
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), 0, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None:
        reason = _missing_optional(str(call.excinfo.getrepr(style="short")))
        if reason:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, reason)

"""The chart's PrometheusRule (metrics.prometheusRule.enabled): every alert's expression parses as
PromQL (PyPI promql-parser, the Rust parser GreptimeDB uses), names only series ferry exports with
labels those series have and values ferry sets, and its annotations use only labels the
expression keeps.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from conftest import ROOT, exported_metrics, helm_template, metrics_table
from test_argocd_reasons import REASONS

promql = pytest.importorskip("promql_parser", reason="pip install promql-parser (scripts/setup.sh does)")

EXPECTED_ALERTS = {
    "FerryHostUnreachable", "FerryFenceFailed", "FerryStormGuard", "FerryHostAwaitingConfirmation",
    "FerryFailoverCapacityInsufficient", "FerryVirtualMachineRestartLoop", "FerryMigrationsFailing",
    "FerryNoLeader",
}


def rules() -> list[dict[str, Any]]:
    docs = helm_template(sets=("metrics.prometheusRule.enabled=true", "metrics.prometheusRule.labels.release=prometheus"))
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def family_of(series: str) -> str:
    table = metrics_table()
    for suffix in ("", "_bucket", "_count", "_sum"):
        name = series[: len(series) - len(suffix)] if suffix else series
        if series.endswith(suffix) and name in table:
            return name
    raise AssertionError(f"{series} is not a metric ferry exports (docs/observability.md)")


def host_states() -> set[str]:
    crd = yaml.safe_load((ROOT / "crds" / "hostpools.ferry.dev.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return set(status["properties"]["hosts"]["items"]["properties"]["state"]["enum"])


# Label values ferry sets, for the labels alerts match on.
VALUES = {
    ("ferry_hapolicy_condition", "condition"): {r.condition for r in REASONS if r.kind == "HAPolicy"},
    ("ferry_virtual_machine_status", "reason"): {r.reason for r in REASONS if r.kind == "VirtualMachine" and r.condition == "Ready"},
    ("ferry_host_status", "state"): host_states(),
    ("ferry_migrations_total", "result"): {"succeeded", "failed", "unknown"},
    ("ferry_fences_total", "result"): {"confirmed", "failed"},
}


def test_the_alerts_that_matter_are_there_and_off_by_default() -> None:
    assert {r["alert"] for r in rules()} == EXPECTED_ALERTS
    assert [d for d in helm_template() if d["kind"] == "PrometheusRule"] == []
    page = (ROOT / "docs" / "observability.md").read_text()
    assert sorted(a for a in EXPECTED_ALERTS if f"`{a}`" not in page) == []


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_alert(rule: dict[str, Any]) -> None:
    expr = promql.parse(rule["expr"])  # raises ValueError on a syntax error
    series, _ = exported_metrics()
    selectors: list[Any] = []
    aggregations: list[Any] = []

    def visit(node: Any, *_: Any) -> bool:
        if isinstance(node, promql.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql.AggregateExpr):
            aggregations.append(node)
        return True

    promql.walk(expr, visit)
    assert selectors, "the expression names no metric"
    for sel in selectors:
        assert sel.name in series, f"{sel.name} is not exported"
        family = family_of(sel.name)
        labels = metrics_table()[family][1]
        for m in sel.matchers.matchers:
            assert m.name in labels, f"{family} has no label {m.name}"
            known = VALUES.get((family, m.name))
            if known is not None and m.op == promql.MatchOp.Equal:
                assert m.value in known, f"{family}{{{m.name}={m.value!r}}}: ferry never sets that value"
    # The labels the alert keeps are those of its outermost aggregation.
    kept: set[str] = set()
    if aggregations:
        outer = aggregations[0]
        if outer.modifier is not None:
            assert outer.modifier.type == promql.AggModifierType.By
            kept = set(outer.modifier.labels)
            family_labels = set().union(*(metrics_table()[family_of(s.name)][1] for s in selectors))
            assert kept <= family_labels, kept - family_labels
    used = set(re.findall(r"\$labels\.([a-z_]+)", " ".join(rule["annotations"].values())))
    assert used <= kept, f"annotations use {used - kept}, which the expression drops"
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    if "for" in rule:
        assert re.fullmatch(r"\d+[smh]", rule["for"])

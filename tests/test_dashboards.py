"""The dashboard and the alerting rules use only metrics (and labels) that ``/metrics`` exposes.

Every PromQL expression in deploy/grafana/*.json and deploy/prometheus/*.yml
is read for the metric names it selects; the real app's ``/metrics`` is
scraped after traffic, and each name must be one of its series (a histogram
exposes ``_bucket``, ``_count`` and ``_sum``, a counter ``_total``). Label
names in selectors and in ``by (...)`` must be labels of those metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart

from app.metrics import MetricSet
from tests.conftest import Api

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
#: PromQL's functions, aggregations and keywords: never metric names.
PROMQL_WORDS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "deriv",
        "histogram_quantile",
        "abs",
        "ceil",
        "floor",
        "round",
        "clamp",
        "clamp_min",
        "clamp_max",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "max_over_time",
        "min_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
        "label_replace",
        "label_join",
        "time",
        "timestamp",
        "vector",
        "scalar",
        "sort",
        "sort_desc",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    ]
)
#: Labels Prometheus adds to every series it scrapes, and a histogram's bucket label.
ADDED_LABELS = frozenset({"job", "instance", "le"})


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())

        def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for item in items:
                yield item
                yield from panels(item.get("panels", []))

        for panel in panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            if isinstance(query, dict):
                yield f"{path.name}: ${variable['name']}", query["query"]


def rule_expressions() -> Iterator[tuple[str, str]]:
    for path in sorted((DEPLOY / "prometheus").glob("*.yml")):
        document = yaml.safe_load(path.read_text())
        for group in document.get("groups", []):
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"]


def selectors(expression: str) -> list[tuple[str, set[str]]]:
    """The metric names an expression selects, each with the label names it matches on."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expression)  # strings
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana's variables ($__rate_interval, $job)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,[^)]*\)", r"\1", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?(e[+-]?\d+)?", " ", text)  # numbers
    found = []
    for match in re.finditer(r"([A-Za-z_:][\w:]*)?\s*(\{[^}]*\})?\s*(\()?", text):
        name, matchers, call = match.groups()
        if not name or call or name in PROMQL_WORDS:
            continue
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def grouping_labels(expression: str) -> set[str]:
    return {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expression)
        for label in group.split(",")
        if label.strip()
    }


EXPRESSIONS = [*dashboard_expressions(), *rule_expressions()]


def test_the_deploy_folder_has_a_dashboard_and_rules_for_each_concern() -> None:
    names = {name for _, expression in EXPRESSIONS for name, _ in selectors(expression)}
    for concern in (
        "todo_api_http_request_duration_seconds_count",
        "todo_api_http_request_duration_seconds_bucket",
        "todo_api_database_command_duration_seconds_bucket",
        "todo_api_database_up",
        "todo_api_event_streams_open",
        "todo_api_events_delivered_total",
        "todo_api_change_stream_lag_seconds",
        "todo_api_change_stream_interruptions_total",
        "todo_api_event_streams_dropped_total",
        "todo_api_rate_limit_refusals_total",
        "todo_api_login_failures_total",
        "todo_api_idempotent_replays_total",
        "todo_api_request_deadline_exceeded_total",
        "todo_api_build_info",
    ):
        assert concern in names, concern
    alerts = {where for where, _ in rule_expressions()}
    assert {
        "alerts.yml: TodoApiErrorRatioHigh",
        "alerts.yml: TodoApiLatencyP99High",
        "alerts.yml: TodoApiDatabaseUnavailable",
        "alerts.yml: TodoApiChangeStreamBehind",
        "alerts.yml: TodoApiChangeStreamDown",
        "alerts.yml: TodoApiEventStreamsDropped",
    } <= alerts


def test_the_parser_finds_names_and_labels() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!="x", job=~"$job"}'
        "[$__rate_interval]))) / ignoring(route) b_total or min(c) == 0 and 1e3 > d"
    )
    assert selectors(expression) == [
        ("a_bucket", {"route", "job"}),
        ("b_total", set()),
        ("c", set()),
        ("d", set()),
    ]
    assert grouping_labels(expression) == {"le", "route"}


@pytest.fixture
async def exposed(app: Quart, api: Api) -> dict[str, set[str]]:
    """Series name -> label names, from the real /metrics after some traffic."""
    client = api.client
    headers = {**await api.headers(), "Idempotency-Key": "same"}
    for _ in range(2):
        await client.post("/api/v1/todos", json={"title": "x"}, headers=headers)
    await client.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong pw"})
    await client.get("/nowhere")
    text = await (await client.get("/metrics")).get_data(as_text=True)
    metric_set: MetricSet = app.extensions["metrics"]
    labels_of = {
        metric._name: set(metric._labelnames)
        for metric in vars(metric_set).values()
        if hasattr(metric, "_labelnames")
    }
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
        }.get(family.type, [""])
        for suffix in suffixes:
            series[family.name + suffix] = labels_of.get(family.name, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(set(sample.labels) - {"le"})
    return series


def test_every_metric_and_label_used_is_exposed(exposed: dict[str, set[str]]) -> None:
    problems = []
    for where, expression in EXPRESSIONS:
        used = selectors(expression)
        if not used:
            problems.append(f"{where}: no metric found in {expression!r}")
        known_labels = set(ADDED_LABELS)
        for name, labels in used:
            if name not in exposed:
                problems.append(f"{where}: {name} is not exposed by /metrics")
                continue
            if not labels <= exposed[name] | ADDED_LABELS:
                problems.append(f"{where}: {name} has no label {labels - exposed[name]}")
            known_labels |= exposed[name]
        if not grouping_labels(expression) <= known_labels:
            problems.append(f"{where}: grouped by {grouping_labels(expression) - known_labels}")
    assert not problems, "\n".join(problems)

"""The Grafana dashboard in docs/grafana/ queries only metrics the ingress and the workers export."""

from __future__ import annotations

import json
import re
from typing import Any

from ingress.metrics import IngressMetrics
from tests.conftest import REPO
from workers.metrics import QUEUE_GAUGES, WorkerMetrics

DASHBOARD = REPO / "docs" / "grafana" / "stripe-fanout.json"
METRIC = re.compile(r"\bfanout_[a-z_]+\b")


def registries() -> list[Any]:
    """The ingress's and a worker's registries, each labelled metric given a child."""
    ingress = IngressMetrics()
    ingress.received.inc()
    ingress.reject("bad_signature")
    ingress.duplicates.inc()
    ingress.publish(("customer",))
    ingress.publish(())
    ingress.latency.observe(0.001)
    ingress.reloads.labels("ok").inc()
    ingress.table_version("abc")
    worker = WorkerMetrics()
    worker.handler_finished("customer", "noop", "ok", 0.001)
    worker.entries_in_flight("customer", 1)
    worker.read_batch("customer", 4)
    for gauge in worker.queue.values():
        gauge.labels("customer", "0").set(1)
    return [ingress.registry, worker.registry]


def exported_samples() -> set[str]:
    return {sample.name for registry in registries() for family in registry.collect() for sample in family.samples}


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    found += [variable["query"]["query"] for variable in dashboard["templating"]["list"]
              if isinstance(variable.get("query"), dict)]
    return found


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exported = exported_samples()
    used = {name for expr in expressions() for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no fanout_ metric"
    assert used - exported == set()


def test_the_dashboard_shows_latency_outcomes_queue_gauges_and_ingress_rates() -> None:
    text = "\n".join(expressions())
    for needed in ("histogram_quantile(0.5, sum by (pool, handler, le) (rate(fanout_handler_duration_seconds_bucket",
                   "histogram_quantile(0.99, sum by (pool, handler, le) (rate(fanout_handler_duration_seconds_bucket",
                   "fanout_handler_outcomes_total", "fanout_ingress_received_total",
                   "fanout_ingress_published_total"):
        assert needed in text
    for gauge in QUEUE_GAUGES:
        assert f"fanout_pool_{gauge}" in text


def test_the_readme_lists_every_metric_exported() -> None:
    listed = set(re.findall(r"^\| `(fanout_[a-z_]+)` \|", (REPO / "README.md").read_text(), re.M))
    # Counters as queried (with _total), histograms by their own name.
    families = {family.name + ("_total" if family.type == "counter" else "")
                for registry in registries() for family in registry.collect()}
    assert families - listed == set()
    assert listed - families == set()

"""The Grafana dashboard queries only metrics, and labels, that the worker exports (and
kafka-exporter's lag), each scoped by the job and namespace template variables."""

import json
import math
import os
import re
from itertools import combinations
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from emotion_stream.worker.observability import WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "emotion-stream.json"
GRID_COLUMNS = 24

METRIC_NAME = re.compile(r"\bemotion_[a-z0-9_]+\b")
BY_CLAUSE = re.compile(r"\bby\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# The series each metric type puts on /metrics, as suffixes of its family name.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}


def _exported_series() -> dict[str, tuple[str, frozenset[str]]]:
    """Every series name the worker exports -> (its family name, the label names it carries)."""
    metrics = WorkerMetrics()
    labels_by_family = {
        family.name: frozenset(attribute._labelnames)  # the public API exposes label names only via samples
        for attribute in vars(metrics).values()
        if isinstance(attribute, MetricWrapperBase)
        for family in attribute.describe()
    }
    series: dict[str, tuple[str, frozenset[str]]] = {}
    for family in metrics.registry.collect():
        labels = labels_by_family.get(family.name, frozenset())
        for suffix in SERIES_SUFFIXES.get(family.type, ("",)):
            name = family.name + suffix
            series[name] = (family.name, labels | {"le"} if suffix == "_bucket" else labels)
        for sample in family.samples:  # whatever else the client exposes (e.g. *_created)
            series.setdefault(sample.name, (family.name, labels | frozenset(sample.labels)))
    return series


EXPORTED = _exported_series()

# Labels Prometheus adds to every series it scrapes (the target's; on Kubernetes the
# PodMonitor's namespace and pod), which the panels may group by.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
# Series from outside the worker that the panels read, with their labels: kafka-exporter's lag
# (deploy/docker-compose.yml, Strimzi's kafkaExporter), which outlives the workers.
EXTERNAL = {"kafka_consumergroup_lag": frozenset({"consumergroup", "topic", "partition"})}
EXTERNAL_NAME = re.compile(r"\b(?:" + "|".join(EXTERNAL) + r")\b")
SCOPE = re.compile(r'\{[^}]*job=~"\$job"[^}]*namespace=~"\$namespace"[^}]*\}')


def _load() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    """All panels, rows' collapsed children included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _targets(dashboard: dict) -> list[tuple[dict, dict]]:
    return [(panel, target) for panel in _panels(dashboard) for target in panel.get("targets", [])]


def _problems(dashboard: dict) -> list[str]:
    """Metric names and labels in the queries that the worker does not export."""
    problems = []
    for panel, target in _targets(dashboard):
        expr = target.get("expr", "")
        names = set(METRIC_NAME.findall(expr))
        external = set(EXTERNAL_NAME.findall(expr))
        if not names and not external:
            problems.append(f"{panel['title']!r}: no emotion_* metric in {expr!r}")
        labels: set[str] = set(TARGET_LABELS)
        for name in sorted(external):
            labels |= EXTERNAL[name]
        for name in sorted(names):
            if name not in EXPORTED:
                problems.append(f"{panel['title']!r}: {name} is not exported by the worker")
            else:
                labels |= EXPORTED[name][1]
            # Every worker series is scoped to the chosen namespace and job.
            for selector in re.findall(rf"\b{name}\b(\{{[^}}]*\}})?", expr):
                if not SCOPE.fullmatch(selector):
                    problems.append(f"{panel['title']!r}: {name} without the $job and $namespace matchers")
        used = {label.strip() for clause in BY_CLAUSE.findall(expr) for label in clause.split(",")}
        used |= set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
        for label in sorted(used - {""} - labels):
            problems.append(f"{panel['title']!r}: label {label!r} is on none of {sorted(names)}")
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return _load()


def test_it_is_a_dashboard(dashboard):
    assert dashboard["uid"] == "emotion-stream"
    assert dashboard["title"] == "emotion-stream"
    assert dashboard["schemaVersion"] == 39
    assert dashboard["refresh"] == "10s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert dashboard["panels"]
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert len(ids) == len(set(ids)), ids


def test_the_datasource_is_a_template_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}", panel["title"]


def test_namespace_job_and_group_are_template_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("namespace", "job"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"]["uid"] == "${datasource}", name
        assert f", {name})" in variable["definition"], name
        # "All" must also match series without the label (compose has no namespace).
        assert variable["includeAll"] and variable["allValue"] == ".*", name
    assert variables["group"]["query"] == "emotion-stream"  # the default EMOTION_GROUP_ID


def test_the_lag_panel_reads_the_broker_through_kafka_exporter(dashboard):
    """The workers' own lag metric vanishes with the workers, when the backlog matters most."""
    (panel,) = [p for p in _panels(dashboard) if p["title"] == "Consumer lag"]
    first = panel["targets"][0]["expr"]
    assert "kafka_consumergroup_lag" in first and 'consumergroup=~"$group"' in first


def test_the_model_process_panels_read_its_memory_and_cpu(dashboard):
    queried = " ".join(t["expr"] for _, t in _targets(dashboard))
    assert "emotion_model_process_resident_memory_bytes" in queried
    assert "rate(emotion_model_process_cpu_seconds" in queried


def test_the_model_process_gauges_read_proc(tmp_path):
    from emotion_stream.worker.observability import process_usage

    metrics = WorkerMetrics()
    memory = "emotion_model_process_resident_memory_bytes"
    assert math.isnan(metrics.registry.get_sample_value(memory))  # no model process named yet
    metrics.watch_model_process(os.getpid())
    assert metrics.registry.get_sample_value(memory) > 10 << 20
    assert metrics.registry.get_sample_value("emotion_model_process_cpu_seconds") > 0
    # A fake /proc: a command name with spaces and parentheses, 250 + 50 ticks of CPU.
    (tmp_path / "42").mkdir()
    (tmp_path / "42/statm").write_text("1000 300 20 1 0 50 0\n")
    fields = ["S", *["0"] * 10, "250", "50", *["0"] * 30]
    (tmp_path / "42/stat").write_text("42 (model (a) b) " + " ".join(fields) + "\n")
    rss, cpu = process_usage(42, proc=tmp_path)
    assert rss == 300 * os.sysconf("SC_PAGE_SIZE") and cpu == 300 / os.sysconf("SC_CLK_TCK")
    assert all(math.isnan(v) for v in process_usage(43, proc=tmp_path))  # gone: no value


def test_every_panel_has_a_title_a_unit_and_queries(dashboard):
    for panel in _panels(dashboard):
        assert panel.get("title", "").strip(), panel
        if panel["type"] != "row":
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
            assert panel["targets"] and all(t.get("expr") for t in panel["targets"]), panel["title"]


def test_panels_fit_the_grid_and_do_not_overlap(dashboard):
    boxes = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= GRID_COLUMNS, panel["title"]
        boxes.append((panel["title"], x, y, x + w, y + h))
    for (a, ax0, ay0, ax1, ay1), (b, bx0, by0, bx1, by1) in combinations(boxes, 2):
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"


def test_every_metric_and_label_queried_is_one_the_worker_exports(dashboard):
    assert _problems(dashboard) == []


def test_a_misspelt_metric_or_label_is_caught(dashboard):
    """The check above is not vacuous: it rejects names the worker does not export."""
    broken = json.loads(
        json.dumps(dashboard)
        .replace("emotion_posts_in_total", "emotion_posts_read_total")
        .replace("by (kind)", "by (reason)")
    )
    problems = "\n".join(_problems(broken))
    assert "emotion_posts_read_total is not exported" in problems
    assert "label 'reason'" in problems
    # A histogram queried under its bare family name, or a counter without _total, is no series.
    assert "emotion_batch_size" not in EXPORTED
    assert "emotion_posts_in" not in EXPORTED


def test_the_panels_cover_the_main_metrics(dashboard):
    queried = {name for _, target in _targets(dashboard) for name in METRIC_NAME.findall(target["expr"])}
    for name in (
        "emotion_posts_in_total",
        "emotion_results_out_total",
        "emotion_end_to_end_seconds_bucket",
        "emotion_consumer_lag",
        "emotion_dead_letters_total",
        "emotion_batch_size_bucket",
        "emotion_model_seconds_bucket",
        "emotion_predictions_total",
        "emotion_ready",
        "emotion_send_errors_total",
        "emotion_commit_failures_total",
    ):
        assert name in queried, name


def test_the_emotion_mix_is_the_per_label_counter_stacked(dashboard):
    (family,) = WorkerMetrics().labels.describe()
    counter = f"{family.name}_total"
    (panel,) = [p for p in _panels(dashboard) if p["title"] == "Emotion mix"]
    assert panel["type"] == "timeseries"
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    (target,) = panel["targets"]
    assert METRIC_NAME.findall(target["expr"]) == [counter]
    assert "by (label)" in target["expr"] and "rate(" in target["expr"]
    assert target["legendFormat"] == "{{label}}"

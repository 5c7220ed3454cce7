"""The Grafana dashboards, built with grafana-foundation-sdk (a Grafana 11 build, pinned)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import elasticsearch as es
from grafana_foundation_sdk.builders import heatmap, logs, stat, timeseries
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from pyobs._dashgen import slo
from pyobs._dashgen.slo import REQUESTS, SERVER_ERROR

#: The dashboards' datasource selectors: every panel and query reads its datasource from one
#: of these variables, so a Grafana whose datasources have other uids needs no edit.
PROMETHEUS_VAR = "datasource"
ELASTICSEARCH_VAR = "logs_datasource"
PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid=f"${{{PROMETHEUS_VAR}}}")
ELASTICSEARCH = model.DataSourceRef(type_val="elasticsearch", uid=f"${{{ELASTICSEARCH_VAR}}}")

SVC = 'service=~"$service"'
SVC_ROUTE = 'service=~"$service", http_route=~"$route"'
RATE = "$__rate_interval"


def _q(expr: str, legend: str, ref: str = "A") -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()


def _ts(
    title: str, description: str, unit: str, *queries: prom.Dataquery, width: int = 12
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(
            common_b.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
    )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def _stat(
    title: str, description: str, unit: str, expr: str, width: int = 6, legend: str = ""
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .span(width)
        .height(4)
        .with_target(_q(expr, legend).instant())
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def _datasource_variable(name: str, label: str, kind: str) -> dash.DatasourceVariable:
    # Defaults to the provisioned datasource of that type (the stack's fixed uid) when present.
    return dash.DatasourceVariable(name).label(label).type(kind).regex("")


def _with_datasources(board: dash.Dashboard, logs: bool = False) -> dash.Dashboard:
    board = board.with_variable(_datasource_variable(PROMETHEUS_VAR, "Prometheus", "prometheus"))
    if logs:
        board = board.with_variable(
            _datasource_variable(ELASTICSEARCH_VAR, "Logs", "elasticsearch")
        )
    return board


def _service_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable("service")
        .label("Service")
        .datasource(PROMETHEUS)
        .query(f"label_values({REQUESTS}_count, service)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def _route_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable("route")
        .label("Route")
        .datasource(PROMETHEUS)
        .query(f"label_values({REQUESTS}_count{{{SVC}}}, http_route)")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def _base(uid: str, title: str, description: str) -> dash.Dashboard:
    links: list[cogbuilder.Builder[model.DashboardLink]] = [
        dash.DashboardLink("pyobs")
        .type(model.DashboardLinkType.DASHBOARDS)
        .tags(["pyobs"])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
    ]
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["pyobs"])
        .editable()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .links(links)
    )


def overview() -> dash.Dashboard:
    """RED per service and route, latency heatmap with exemplars, status codes, logs."""
    count = f"{REQUESTS}_count"
    return (
        _with_datasources(
            _base(
                slo.OVERVIEW_UID, "pyobs / Service overview", "Rate, errors and duration per route."
            ),
            logs=True,
        )
        .with_variable(_service_variable())
        .with_variable(_route_variable())
        .with_row(dash.Row("Golden signals"))
        .with_panel(
            _stat(
                "Requests per second",
                "All selected services and routes.",
                "reqps",
                f"sum(rate({count}{{{SVC_ROUTE}}}[{RATE}]))",
            )
        )
        .with_panel(
            _stat(
                "5xx ratio",
                "Share of requests answered with a 5xx.",
                "percentunit",
                f"(sum(rate({count}{{{SERVER_ERROR}, {SVC_ROUTE}}}[{RATE}]))"
                f" or sum(rate({count}{{{SVC_ROUTE}}}[{RATE}])) * 0)"
                f" / sum(rate({count}{{{SVC_ROUTE}}}[{RATE}]))",
            )
        )
        .with_panel(
            _stat(
                "p99 latency",
                "99th percentile request duration, until the last body byte.",
                "s",
                f"histogram_quantile(0.99, sum by (le) "
                f"(rate({REQUESTS}_bucket{{{SVC_ROUTE}}}[{RATE}])))",
            )
        )
        .with_panel(
            _stat(
                "In flight",
                "Requests being served right now.",
                "short",
                f"sum(http_server_active_requests{{{SVC}}})",
            )
        )
        .with_row(dash.Row("Per route"))
        .with_panel(
            _ts(
                "Requests per second by route",
                "Request rate per service and route template.",
                "reqps",
                _q(
                    f"sum by (service, http_route) (rate({count}{{{SVC_ROUTE}}}[{RATE}]))",
                    "{{service}} {{http_route}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "5xx ratio by route",
                "Share of each route's requests answered with a 5xx.",
                "percentunit",
                _q(
                    f"(sum by (service, http_route) "
                    f"(rate({count}{{{SERVER_ERROR}, {SVC_ROUTE}}}[{RATE}]))"
                    f" or sum by (service, http_route) (rate({count}{{{SVC_ROUTE}}}[{RATE}])) * 0)"
                    f" / sum by (service, http_route) (rate({count}{{{SVC_ROUTE}}}[{RATE}]))",
                    "{{service}} {{http_route}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Latency percentiles by route",
                "p50, p90 and p99 request duration per service and route.",
                "s",
                *(
                    _q(
                        f"histogram_quantile({q}, sum by (service, http_route, le) "
                        f"(rate({REQUESTS}_bucket{{{SVC_ROUTE}}}[{RATE}])))",
                        f"p{round(q * 100)} {{{{service}}}} {{{{http_route}}}}",
                        ref,
                    )
                    for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
                ),
            )
        )
        .with_panel(
            exemplar_heatmap(
                "Latency heatmap",
                "Request durations; the dots are exemplars linking to their trace.",
                f"sum by (le) (increase({REQUESTS}_bucket{{{SVC_ROUTE}}}[{RATE}]))",
            )
        )
        .with_panel(
            _ts(
                "Responses by status code",
                "Response rate per exact status code.",
                "reqps",
                _q(
                    f"sum by (http_response_status_code) (rate({count}{{{SVC_ROUTE}}}[{RATE}]))",
                    "{{http_response_status_code}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "In-flight requests",
                "Requests being served, per service and method.",
                "short",
                _q(
                    f"sum by (service, http_request_method) (http_server_active_requests{{{SVC}}})",
                    "{{service}} {{http_request_method}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Unhandled exceptions",
                "Exceptions that escaped the application, by type.",
                "ops",
                _q(
                    f"sum by (service, error_type) "
                    f"(rate(pyobs_http_server_exceptions_total{{{SVC_ROUTE}}}[{RATE}]))",
                    "{{service}} {{error_type}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Response size",
                "Average response body size per route.",
                "bytes",
                _q(
                    f"sum by (service, http_route) "
                    f"(rate(http_server_response_body_size_bytes_sum{{{SVC_ROUTE}}}[{RATE}]))"
                    f" / sum by (service, http_route) "
                    f"(rate(http_server_response_body_size_bytes_count{{{SVC_ROUTE}}}[{RATE}]))",
                    "{{service}} {{http_route}}",
                ),
            )
        )
        .with_row(dash.Row("Logs"))
        .with_panel(_logs_panel())
    )


def _logs_panel() -> logs.Panel:
    return (
        logs.Panel()
        .title("Warnings and errors")
        .description("From Elasticsearch; open a line for its trace.id and the link to the trace.")
        .datasource(ELASTICSEARCH)
        .span(24)
        .height(10)
        .with_target(
            es.Dataquery()
            .ref_id("A")
            .query(
                'service.name:${service:lucene} AND log.level:("warning" OR "error" OR "critical")'
            )
            .time_field("@timestamp")
            .metrics([es.Logs().id("1")])
        )
        .show_time(True)
        .wrap_log_message(True)
        .enable_log_details(True)
        .sort_order(common.LogsSortOrder.DESCENDING)
    )


def runtime() -> dash.Dashboard:
    """Process, garbage collector, event loop, workers and the log pipeline."""
    return (
        _with_datasources(
            _base(slo.RUNTIME_UID, "pyobs / Runtime", "The Python processes behind each service.")
        )
        .with_variable(_service_variable())
        .with_row(dash.Row("Processes"))
        .with_panel(
            _ts(
                "Targets up and processes",
                "Scrape targets answering, and the processes behind them (a multiprocess "
                "gunicorn/uwsgi target reports its workers' sums as one process).",
                "short",
                _q(f"sum by (service) (up{{{SVC}}})", "{{service}} targets up"),
                _q(
                    f"count by (service) (process_start_time_seconds{{{SVC}}})",
                    "{{service}} processes",
                    "B",
                ),
            )
        )
        .with_panel(
            _ts(
                "CPU",
                "CPU seconds per second, per instance.",
                "percentunit",
                _q(
                    f"sum by (service, instance) "
                    f"(rate(process_cpu_seconds_total{{{SVC}}}[{RATE}]))",
                    "{{service}} {{instance}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Resident memory",
                "Resident set size per instance.",
                "bytes",
                _q(
                    f"sum by (service, instance) (process_resident_memory_bytes{{{SVC}}})",
                    "{{service}} {{instance}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Open file descriptors",
                "Share of the descriptor limit in use.",
                "percentunit",
                _q(
                    f"max by (service, instance) "
                    f"(process_open_fds{{{SVC}}} / process_max_fds{{{SVC}}})",
                    "{{service}} {{instance}}",
                ),
            )
        )
        .with_row(dash.Row("Python"))
        .with_panel(
            _ts(
                "GC collections",
                "Garbage-collector runs per second, by generation.",
                "ops",
                _q(
                    f"sum by (service, generation) "
                    f"(rate(python_gc_collections_total{{{SVC}}}[{RATE}]))",
                    "{{service}} gen {{generation}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "GC objects collected",
                "Objects freed per second, by generation.",
                "ops",
                _q(
                    f"sum by (service, generation) "
                    f"(rate(python_gc_objects_collected_total{{{SVC}}}[{RATE}]))",
                    "{{service}} gen {{generation}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Event-loop lag",
                "How late the event loop runs a scheduled callback (async servers only); "
                "high values mean blocking calls on the loop.",
                "s",
                *(
                    _q(
                        f"histogram_quantile({q}, sum by (service, le) "
                        f"(rate(pyobs_event_loop_lag_seconds_bucket{{{SVC}}}[{RATE}])))",
                        f"p{round(q * 100)} {{{{service}}}}",
                        ref,
                    )
                    for q, ref in ((0.5, "A"), (0.99, "B"))
                ),
            )
        )
        .with_row(dash.Row("Logs pipeline"))
        .with_panel(
            _ts(
                "Log records by level",
                "Records written by the application, by level.",
                "ops",
                _q(
                    f"sum by (service, level) (rate(pyobs_log_events_total{{{SVC}}}[{RATE}]))",
                    "{{service}} {{level}}",
                ),
            )
        )
        .with_panel(
            _ts(
                "Log shipper",
                "Records sent to Logstash, spooled to disk or dropped; and the in-memory queue.",
                "short",
                _q(
                    f"sum by (service, outcome) "
                    f"(rate(pyobs_log_shipper_events_total{{{SVC}}}[{RATE}]))",
                    "{{service}} {{outcome}}/s",
                ),
                _q(
                    f"sum by (service) (pyobs_log_shipper_queue_events{{{SVC}}})",
                    "{{service}} queued",
                    "B",
                ),
            )
        )
    )


def dashboards() -> dict[str, cogbuilder.Builder[model.Dashboard]]:
    """Every dashboard by file name."""
    return {
        "pyobs-overview.json": overview(),
        "pyobs-runtime.json": runtime(),
        # One SLO dashboard per service comes from the specs (slogen.py, dashboards/slo/).
    }


def prometheus_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every Prometheus target and variable of a dashboard JSON."""
    out: list[tuple[str, str]] = []
    for panel in board.get("panels", []):
        uid = (panel.get("datasource") or {}).get("uid")
        for target in panel.get("targets", []):
            target_uid = (target.get("datasource") or {}).get("uid", uid)
            if target_uid == PROMETHEUS.uid and "expr" in target:
                out.append((panel.get("title", ""), target["expr"]))
    for variable in board.get("templating", {}).get("list", []):
        if (variable.get("datasource") or {}).get("uid") == PROMETHEUS.uid:
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            out.append((f"${variable['name']}", str(text)))
    return out


def exemplar_heatmap(title: str, description: str, expr: str) -> heatmap.Panel:
    """A full-width duration heatmap of ``expr`` (buckets by ``le``) with exemplars shown."""
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .span(12)
        .height(8)
        .with_target(_q(expr, "{{le}}").format(PromQueryFormat.HEATMAP).exemplar(True))
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .exemplars_color("rgba(255,0,255,0.7)")
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .steps(64)
        )
    )

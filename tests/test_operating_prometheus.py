"""End to end: a real Prometheus scraping the real Envoy admin and sidecar, with the repository's
alert rules (time-scaled: a minute of a rule is a second here, see harness.prometheus_server)
and the Grafana dashboard's queries.

A quiet period, with an occasional refusal, fires nothing; a flood over one plan's request limit
makes the rate-limit alert for that limit go pending and then firing, and the plan's alert fire.
Then every dashboard panel's query returns data from what the traffic left. A second Envoy with
a cluster tier (reserving blocks, on an in-memory voxgate-rls, both scraped too) gives the
cluster panels theirs.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import requests

from harness import PIPER_VOICE
from harness.cluster import RateLimitService
from harness.prometheus_server import REPO_ROOT, Prometheus
from tools import devkeys

DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "voxgate-dashboard.json"
MODELS = "/v1/models"
TIMEOUT = 60
FLOOD_CAPACITY = 5
QUIET_SECONDS = 10
FIRING_WITHIN_S = 40
# Grafana's range variables, for queries sent to Prometheus directly.
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$__range": "5m"}


@pytest.fixture(scope="module")
def watched(stack, envoy_factory, tmp_path_factory):
    config = stack.filter_config(metered_metadata=True)
    config["rate_limits"]["plans"]["flood"] = {"requests": {"capacity": FLOOD_CAPACITY, "refill_per_second": 0}}
    config["rate_limits"].pop("global", None)
    envoy = envoy_factory(config)
    cluster_config = json.loads(json.dumps(config))
    cluster_config["rate_limits"]["cluster"] = {"service": "voxgate_rls", "limits": ["subject_requests"],
                                                "reserve": 0.1}
    rls = RateLimitService(tmp_path_factory.mktemp("rls"), cluster_config, redis=None).start()
    cluster_envoy = stack.new_envoy(cluster_config, rls_port=rls.port).start()
    targets = {
        "voxgate-envoy": (f"127.0.0.1:{envoy.admin_port}", "/stats/prometheus"),
        "voxgate-envoy-cluster": (f"127.0.0.1:{cluster_envoy.admin_port}", "/stats/prometheus"),
        "voxgate-sidecar": (f"127.0.0.1:{stack.sidecar.port}", "/metrics"),
        "voxgate-rls": (f"127.0.0.1:{rls.admin_port}", "/metrics"),
    }
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), targets).start()
    try:
        deadline = time.monotonic() + 20
        while prometheus.targets_up() != {job: True for job in targets}:
            assert time.monotonic() < deadline, prometheus.targets_up()
            time.sleep(0.5)
        yield envoy, cluster_envoy, prometheus
    finally:
        prometheus.stop()
        cluster_envoy.stop()
        rls.stop()


def get_models(envoy, token: str, session=requests) -> int:
    return session.get(envoy.url + MODELS, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT).status_code


class Traffic:
    """Allowed requests from new free-plan subjects, two a second, until stopped."""

    def __init__(self, stack, envoy):
        self._stop = threading.Event()
        self.statuses: list[int] = []
        self._thread = threading.Thread(target=self._run, args=(stack, envoy), daemon=True)

    def _run(self, stack, envoy):
        while not self._stop.wait(0.5):
            self.statuses.append(get_models(envoy, stack.token(sub=f"quiet-{uuid.uuid4().hex[:8]}")))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def rate_limit_alerts(prometheus) -> list[tuple[str, str, str]]:
    return [(a["labels"]["alertname"], a["labels"].get("limit") or a["labels"].get("plan"), a["state"])
            for a in prometheus.alerts()]


def test_quiet_traffic_fires_nothing_and_a_flood_fires_the_rate_limit_alert(stack, watched):
    envoy, _, prometheus = watched
    with Traffic(stack, envoy) as traffic:
        time.sleep(3)
        # One subject of the flood plan runs out once: refusals, but a small share of them.
        single = stack.token(sub=f"quiet-flood-{uuid.uuid4().hex[:8]}", plan="flood")
        assert [get_models(envoy, single) for _ in range(FLOOD_CAPACITY + 1)] == [200] * FLOOD_CAPACITY + [429]
        deadline = time.monotonic() + QUIET_SECONDS
        while time.monotonic() < deadline:
            assert prometheus.alerts() == [], "an alert went pending in a quiet period"
            time.sleep(0.5)
        assert prometheus.query('voxgate_rate_limited{bucket="subject_requests"}'), "the refusal was scraped"

        flooder = stack.token(sub=f"flood-{uuid.uuid4().hex[:8]}", plan="flood")
        seen: list[tuple[str, str, str]] = []
        deadline = time.monotonic() + FIRING_WITHIN_S
        with requests.Session() as session:
            while ("VoxgateRateLimitRefusalsHigh", "subject_requests", "firing") not in seen:
                assert time.monotonic() < deadline, f"alerts seen: {sorted(set(seen))}"
                for _ in range(10):
                    get_models(envoy, flooder, session)
                    time.sleep(0.01)
                seen += rate_limit_alerts(prometheus)
        while ("VoxgatePlanRefusalsHigh", "flood", "firing") not in seen:
            assert time.monotonic() < deadline, f"alerts seen: {sorted(set(seen))}"
            time.sleep(0.5)
            seen += rate_limit_alerts(prometheus)
    assert all(status == 200 for status in traffic.statuses)
    states = [state for name, limit, state in seen if (name, limit) == ("VoxgateRateLimitRefusalsHigh", "subject_requests")]
    assert states.index("pending") < states.index("firing"), "pending before firing"
    assert {name for name, _, _ in seen} == {"VoxgateRateLimitRefusalsHigh", "VoxgatePlanRefusalsHigh"}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def test_every_dashboard_panel_returns_data_after_traffic(stack, watched):
    envoy, cluster_envoy, prometheus = watched
    token = stack.token(sub=f"dash-{uuid.uuid4().hex[:8]}")
    speech = requests.post(envoy.url + "/v1/audio/speech", headers={"Authorization": f"Bearer {token}"},
                           json={"model": "tts-1", "input": "Dashboards need data.", "voice": PIPER_VOICE},
                           timeout=TIMEOUT)
    assert speech.status_code == 200
    assert get_models(envoy, token) == 200, "a cached token"
    assert get_models(envoy, stack.token(sub="dash-forger", signing_key=devkeys.generate_private("ES256"))) == 401
    flooder = stack.token(sub=f"dash-flood-{uuid.uuid4().hex[:8]}", plan="flood")
    assert [get_models(envoy, flooder) for _ in range(FLOOD_CAPACITY + 1)][-1] == 429
    # Through the cluster tier: a call, then requests its reserved block admits.
    assert [get_models(cluster_envoy, token) for _ in range(3)] == [200] * 3

    queries = dashboard_queries()
    assert len(queries) >= 10
    deadline = time.monotonic() + 15
    while True:
        empty = [(title, expr) for title, expr in queries if not prometheus.query(expr)]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert empty == [], f"panels without data: {empty}"

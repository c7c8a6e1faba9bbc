"""The alert rules (monitoring/prometheus/voxgate-rules.yml) under `promtool`: they load, every
one carries `for:`, a severity, a summary and a runbook entry that exists in docs/operating.md,
and `promtool test rules` proves each fires on the series that should fire it and stays silent
on the ones that should not."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from harness.prometheus_server import REPO_ROOT, RULES

RULE_TESTS = RULES.with_name("voxgate-rules.test.yml")
OPERATING = REPO_ROOT / "docs" / "operating.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120,
                          check=False)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_rules_load():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_for_severity_summary_and_a_runbook_entry():
    anchors = {re.sub(r"[^a-z0-9 -]", "", line[4:].strip().lower()).replace(" ", "-")
               for line in OPERATING.read_text().splitlines() if line.startswith("### ")}
    rules = alert_rules()
    assert len(rules) >= 9
    for rule in rules:
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"docs/operating.md#{name.lower()}", name
        assert name.lower() in anchors, f"{name} has no runbook entry (### {name}) in {OPERATING}"


def test_each_alert_is_tested_firing_and_silent():
    firing, silent = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr

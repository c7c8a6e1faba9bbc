"""End to end: the filter's counters appear in Envoy's /stats/prometheus with real labels
(the `stats_tags` of envoy/envoy.yaml.in turn name segments into labels)."""

from __future__ import annotations

import time
import uuid

import requests

TIMEOUT = 60
VOICE = "en_US-joe-medium"


def value(metrics, name: str, **labels) -> float:
    return sum(s.value for s in metrics.find(name, **labels))


def test_decisions_and_characters_are_counted_with_labels(stack):
    before = stack.envoy_stats()
    token = stack.token(sub=f"metrics-{uuid.uuid4().hex[:8]}")
    text = "Counting characters."
    assert requests.get(stack.url + "/v1/models", timeout=TIMEOUT).status_code == 401
    assert requests.get(stack.url + "/v1/models", headers={"Authorization": f"Bearer {token}"},
                        timeout=TIMEOUT).status_code == 200
    speech = requests.post(stack.url + "/v1/audio/speech", headers={"Authorization": f"Bearer {token}"},
                           json={"model": "tts-1", "input": text, "voice": VOICE, "response_format": "wav"},
                           timeout=TIMEOUT)
    assert speech.status_code == 200, speech.text
    assert requests.get(stack.url + "/nowhere", timeout=TIMEOUT).status_code == 404

    after = stack.envoy_stats()
    assert value(after, "voxgate_decision", reason="token_missing") == \
        value(before, "voxgate_decision", reason="token_missing") + 1
    assert value(after, "voxgate_decision", reason="unknown_route") == \
        value(before, "voxgate_decision", reason="unknown_route") + 1
    assert value(after, "voxgate_decision", reason="allowed") == value(before, "voxgate_decision", reason="allowed") + 2
    assert value(after, "voxgate_characters_admitted") == value(before, "voxgate_characters_admitted") + len(text)
    # One worker verified the token (a miss); the second request was a hit in the same worker or
    # a miss in the other one.
    cache_before = value(before, "voxgate_token_cache", result="hit") + value(before, "voxgate_token_cache", result="miss")
    cache_after = value(after, "voxgate_token_cache", result="hit") + value(after, "voxgate_token_cache", result="miss")
    assert cache_after == cache_before + 2
    assert after.find("voxgate_cas_retries")


def test_rate_limit_refusals_are_labelled_by_bucket(stack, envoy_factory):
    config = stack.filter_config(metered_metadata=True)
    config["rate_limits"]["plans"]["free"]["requests"] = {"capacity": 1, "refill_per_second": 0.001}
    envoy = envoy_factory(config)
    headers = {"Authorization": f"Bearer {stack.token(sub=f'metrics-{uuid.uuid4().hex[:8]}')}"}
    statuses = [requests.get(envoy.url + "/v1/models", headers=headers, timeout=TIMEOUT).status_code
                for _ in range(2)]
    assert statuses == [200, 429]
    deadline = time.monotonic() + 10
    while True:
        stats = envoy.stats()
        if value(stats, "voxgate_rate_limited", bucket="subject_requests") == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value(stats, "voxgate_rate_limited", bucket="subject_requests") == 1
    assert value(stats, "voxgate_decision", reason="rate_limited") == 1

"""End to end: Envoy refuses a bad filter configuration (`envoy --mode validate` loads the real
module and runs its `on_configure`), and the one log line names the offending field."""

from __future__ import annotations

import copy

import pytest


def _with(config: dict, path: str, value) -> dict:
    """A copy of `config` with the dotted `path` set to `value` (list indexes as numbers)."""
    config = copy.deepcopy(config)
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return config


def test_the_default_configuration_validates(stack):
    result = stack.validate(stack.filter_config())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path, value, named", [
    ("frobnicate", True, "frobnicate"),
    ("routes.0.prefix", "v1/audio/speech", "routes[0].prefix"),
    ("routes.1.api", "elevenlabs", "routes[1].api"),
    ("forward_token", "yes", "forward_token"),
    ("rate_limits.plans.free.requests.capacity", "ten", "rate_limits.plans.free.requests.capacity"),
    ("auth.providers.0.issuer", 42, "auth.providers[0].issuer"),
])
def test_bad_configuration_is_refused_naming_the_field(stack, path, value, named):
    result = stack.validate(_with(stack.filter_config(), path, value))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    lines = [line for line in output.splitlines() if "voxgate: invalid configuration" in line]
    assert len(lines) == 1, output
    assert f"`{named}`" in lines[0]


def test_auth_routes_without_an_auth_section_are_refused(stack):
    config = stack.filter_config()
    del config["auth"]
    result = stack.validate(config)
    assert result.returncode != 0
    assert "`auth`" in result.stdout + result.stderr

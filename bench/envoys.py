"""The Envoy configurations the filter benchmarks compare, and the Envoy processes that run them.

Every front Envoy is the real voxgate bootstrap (`tools/render_envoy.py`, the one `make run`
uses) with only its HTTP filter chain changed, so listener, connection manager, local-reply
mappers, route and upstream cluster are the same for every subject and a difference in cost is
the filters' alone:
- `router`: the router only, the floor;
- `native`: Envoy's own `jwt_authn` (the dev ES256 public key inline, the same issuer and
  audience as the filter's `dev` provider, subject and plan forwarded as headers, the token
  removed) and `local_ratelimit` (one token bucket that never runs dry), with or without
  `jwt_cache_config` (the verified-token cache, off unless configured);
- `voxgate`: the bootstrap as rendered, with the filter configuration each benchmark gives;
- `wasm_floor`: the same bootstrap running an empty proxy-wasm filter (bench/wasm-floor) in
  place of voxgate, on the same V8 runtime: what any Wasm filter costs before doing anything.

The access log stays on in every subject alike (the bootstrap's JSON line per request), written
to /dev/null: formatting it is part of every subject's cost, the disk is not.

The upstream is another Envoy that answers every request itself (`direct_response` 200), so the
floor stays small and the upstream's work is the same whatever the front Envoy ran.

Every Envoy binds port 0 for its listener and admin and reports what it got (as the end-to-end
harness does), so no two processes race for a port.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import yaml

from tools import devkeys, render_envoy

from .context import Context
from .processes import LOOPBACK, Server, StartError

READY_TIMEOUT_S = 60.0
WASM_FLOOR = render_envoy.REPO_ROOT / "target" / "wasm32-wasip1" / "release" / "voxgate_bench_wasm_floor.wasm"
UPSTREAM_BODY = '{"object":"list","data":[]}'
# Far more than any phase can spend, so `local_ratelimit` is consulted on every request and
# never refuses one.
NATIVE_BUCKET_TOKENS = 1_000_000_000
NATIVE_CACHE_ENTRIES = 1024
ROUTER_FILTER = "envoy.filters.http.router"


def voxgate_bootstrap(filter_config: dict, upstream_port: int, wasm_path: Path = render_envoy.WASM,
                      xff_trusted_hops: int = 0, jwt_authn: dict | None = None) -> dict:
    """The real bootstrap, rendered, with the upstream as its sidecar and the access log to /dev/null;
    `xff_trusted_hops` and `jwt_authn` (a `JwtAuthentication` before the filter) as in
    `render_envoy.EnvoyParams`."""
    params = render_envoy.EnvoyParams(
        filter_config=filter_config, listen_port=0, admin_port=0, sidecar_port=upstream_port,
        # No provider fetches keys remotely here; the cluster only needs a port to point at.
        jwks_port=upstream_port, wasm_path=wasm_path,
        access_log=Path("/dev/null"), xff_trusted_hops=xff_trusted_hops, jwt_authn=jwt_authn)
    return yaml.safe_load(render_envoy.render(params))


def wasm_floor_bootstrap(upstream_port: int) -> dict:
    """The bootstrap with the empty Wasm filter (built by `make bench`) in voxgate's place."""
    if not WASM_FLOOR.exists():
        raise FileNotFoundError(f"{WASM_FLOOR} is missing: `make bench` builds it")
    # The empty filter ignores its configuration; any valid one renders the bootstrap.
    return voxgate_bootstrap(render_envoy.filter_config({"keys": []}), upstream_port, wasm_path=WASM_FLOOR)


def router_bootstrap(upstream_port: int) -> dict:
    return _with_filters(_plain_bootstrap(upstream_port), [])


def native_bootstrap(upstream_port: int, keys: devkeys.DevKeys, cache: bool, alg: str = "ES256") -> dict:
    """`jwt_authn` + `local_ratelimit` with the policy the filter enforces on `GET /v1/models`,
    verifying tokens signed with the dev key of `alg`."""
    dev = _dev_provider()
    provider = {
        "issuer": dev["issuer"],
        "audiences": dev["audiences"],
        "local_jwks": {"inline_string": json.dumps({"keys": [keys.key(alg).jwk]})},
        # What the filter does with a verified token: the subject and the plan become headers
        # for the upstream, and the token itself is not forwarded.
        "forward": False,
        "claim_to_headers": [{"header_name": "x-voxgate-subject", "claim_name": "sub"},
                             {"header_name": "x-voxgate-plan", "claim_name": "plan"}],
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": NATIVE_CACHE_ENTRIES}
    jwt_authn = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"dev": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "dev"}}],
        },
    }
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    local_ratelimit = {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench_local_rate_limit",
            "token_bucket": {"max_tokens": NATIVE_BUCKET_TOKENS, "tokens_per_fill": NATIVE_BUCKET_TOKENS,
                             "fill_interval": "1s"},
            "filter_enabled": dict(always, runtime_key="bench_local_rate_limit_enabled"),
            "filter_enforced": dict(always, runtime_key="bench_local_rate_limit_enforced"),
        },
    }
    return _with_filters(_plain_bootstrap(upstream_port), [jwt_authn, local_ratelimit])


def _dev_provider() -> dict:
    """The filter's `dev` provider in envoy/filter-config.json: the native subjects copy its
    issuer and audience, so both sides accept exactly the same tokens."""
    config = json.loads(render_envoy.FILTER_CONFIG.read_text())
    [dev] = [p for p in config["auth"]["providers"] if p["name"] == render_envoy.DEV_PROVIDER]
    return dev


def _plain_bootstrap(upstream_port: int) -> dict:
    # The rendered bootstrap with an empty key set; its Wasm filter is replaced below.
    return voxgate_bootstrap(render_envoy.filter_config({"keys": []}), upstream_port)


def _with_filters(bootstrap: dict, filters: list[dict]) -> dict:
    """`bootstrap` with its HTTP filters before the router replaced by `filters`."""
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                http_filters = network_filter["typed_config"]["http_filters"]
                router = [f for f in http_filters if f["name"] == ROUTER_FILTER]
                network_filter["typed_config"]["http_filters"] = [*filters, *router]
    return bootstrap


def upstream_bootstrap() -> dict:
    """An Envoy that answers every request with 200 and a small JSON body."""
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": UPSTREAM_BODY}},
                        "response_headers_to_add": [{"header": {"key": "content-type",
                                                                "value": "application/json"}}]}],
        }]},
        "http_filters": [{"name": ROUTER_FILTER, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "upstream",
            "address": {"socket_address": {"address": LOOPBACK, "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": manager}]}],
        }]},
    }


class Envoy(Server):
    """One Envoy process: `port` is its listener, `admin_port` its admin interface."""

    def __init__(self, ctx: Context, name: str, bootstrap: dict, concurrency: int):
        folder = ctx.work_dir / f"{ctx.benchmark}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        self.config_path = folder / "envoy.yaml"
        self.config_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        self.admin_address_path = folder / "admin.address"
        self.admin_address_path.unlink(missing_ok=True)
        argv = [str(render_envoy.ENVOY), "-c", str(self.config_path), "--concurrency", str(concurrency),
                "--disable-hot-restart", "--log-level", "warn",
                "--admin-address-path", str(self.admin_address_path)]
        super().__init__(name, argv, 0, ctx.log_path(name), ctx.env())
        self.admin_port = 0
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def admin_url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.admin_port}{path}"

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges by name (`/stats`, plain text)."""
        with urllib.request.urlopen(self.admin_url("/stats"), timeout=10) as response:
            lines = response.read().decode().splitlines()
        values = {}
        for line in lines:
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                values[name] = int(value)
        return values

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.running():
                raise StartError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.2)
        raise StartError(f"{self.name} was not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if not self.admin_port:
            address = self.admin_address_path.read_text().strip() if self.admin_address_path.exists() else ""
            if not address:
                return False
            self.admin_port = int(address.rsplit(":", 1)[1])
        try:
            with urllib.request.urlopen(self.admin_url("/ready"), timeout=2) as response:
                if response.status != 200:
                    return False
            with urllib.request.urlopen(self.admin_url("/listeners?format=json"), timeout=2) as response:
                listeners = json.load(response)["listener_statuses"]
        except OSError:
            return False
        self.port = listeners[0]["local_address"]["socket_address"]["port_value"]
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=1):
                return True
        except OSError:
            return False


def start_upstream(ctx: Context) -> Envoy:
    return Envoy(ctx, "upstream", upstream_bootstrap(), concurrency=1)

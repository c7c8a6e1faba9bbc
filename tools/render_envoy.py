"""Renders the Envoy bootstrap (`envoy/envoy.yaml.in`) and the filter configuration it embeds.

The filter configuration starts from `envoy/filter-config.json`, whose `dev` provider carries an
empty key set: `filter_config()` puts the dev JWKS there. `render()` fills the template's
placeholders (an upper-case name between two `@`); every value is written as a JSON scalar,
which YAML reads unchanged, and the filter configuration becomes one JSON string (the plugin's
`StringValue`).

`mesh=True` renders the filter chain an Istio `WasmPlugin` produces (envoy/istio/): the Wasm
filter without `allow_on_headers_stop_iteration`, so the filter runs with
`hold_headers_for_body: false`, and Envoy's buffer filter between it and the router, which holds
the headers until the filter has passed the body.

The filter learns the sidecar's voices from the sidecar itself: `fetch_catalog()` reads its
`GET /v1/audio/voices` (each voice's name, language and speakers, the default voice, the alias
table) and `with_catalog()` puts that answer into `text.catalog`. A launcher renders after the sidecar is ready, so a voice dropped
into the voices folder reaches the filter with the next restart, and no list is kept twice.

CLI: `python -m tools.render_envoy --out .run/envoy.yaml [--mesh] [--validate]`, ports from the
VOXGATE_*_PORT environment variables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tools import devkeys

REPO_ROOT = devkeys.REPO_ROOT
TEMPLATE = REPO_ROOT / "envoy" / "envoy.yaml.in"
FILTER_CONFIG = REPO_ROOT / "envoy" / "filter-config.json"
WASM = REPO_ROOT / "target" / "wasm32-wasip1" / "wasm" / "voxgate_filter.wasm"
ENVOY = Path(os.environ.get("VOXGATE_ENVOY", REPO_ROOT / ".deps" / "bin" / "envoy"))
DEV_PROVIDER = "dev"

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")


def env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ValueError(f"{name}={value!r} is not a port number")
    return int(value)


def env_count(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    if not value.isdigit() or int(value) > 16:
        raise ValueError(f"{name}={value!r} is not a number from 0 to 16")
    return int(value)


@dataclass
class EnvoyParams:
    """Everything that varies between one rendered bootstrap and another."""

    filter_config: dict
    listen_port: int = 10000
    admin_port: int = 9901
    sidecar_port: int = 5002
    jwks_port: int = 8081
    # The `voxgate_rls` cluster: the rate-limit service of `rate_limits.cluster`.
    rls_port: int = 8091
    wasm_path: Path = WASM
    access_log: Path = field(default_factory=lambda: REPO_ROOT / ".run" / "envoy-access.log")
    mesh: bool = False
    xff_trusted_hops: int = 0
    # A `JwtAuthentication` config for Envoy's jwt_authn filter, placed before the Wasm filter
    # (what Istio's RequestAuthentication produces); None: no jwt_authn.
    jwt_authn: dict | None = None

    @classmethod
    def from_env(cls, filter_config: dict, **overrides) -> "EnvoyParams":
        """Ports from VOXGATE_LISTEN_PORT, VOXGATE_ADMIN_PORT, VOXGATE_SIDECAR_PORT, VOXGATE_JWKS_PORT,
        VOXGATE_RLS_PORT; trusted proxies from VOXGATE_XFF_TRUSTED_HOPS."""
        values = dict(
            listen_port=env_port("VOXGATE_LISTEN_PORT", 10000),
            admin_port=env_port("VOXGATE_ADMIN_PORT", 9901),
            sidecar_port=env_port("VOXGATE_SIDECAR_PORT", 5002),
            jwks_port=env_port("VOXGATE_JWKS_PORT", 8081),
            rls_port=env_port("VOXGATE_RLS_PORT", 8091),
            xff_trusted_hops=env_count("VOXGATE_XFF_TRUSTED_HOPS", 0),
        )
        values.update(overrides)
        return cls(filter_config=filter_config, **values)


def filter_config(jwks: dict, base: Path | dict = FILTER_CONFIG) -> dict:
    """The filter configuration with `jwks` as the inline key set of the `dev` provider."""
    config = copy.deepcopy(base) if isinstance(base, dict) else json.loads(Path(base).read_text())
    providers = config.get("auth", {}).get("providers", [])
    dev = [p for p in providers if p.get("name") == DEV_PROVIDER]
    if len(dev) != 1:
        raise ValueError(f"the filter configuration needs exactly one provider named {DEV_PROVIDER!r}")
    dev[0]["jwks"] = jwks
    return config


def fetch_catalog(sidecar_url: str, timeout: float = 10.0) -> dict:
    """`text.catalog` from the sidecar's `GET /v1/audio/voices` (the sidecar must be ready)."""
    with urllib.request.urlopen(f"{sidecar_url}/v1/audio/voices", timeout=timeout) as answer:
        listing = json.load(answer)
    return {
        "voices": [
            {
                "name": voice["name"],
                "language": voice["language"],
                "num_speakers": voice["num_speakers"],
                "speaker_ids": voice["speaker_ids"],
            }
            for voice in listing["voices"]
        ],
        "default_voice": listing["default_voice"],
        "aliases": {alias: voice for alias, voice in listing["aliases"].items() if voice is not None},
    }


def with_catalog(config: dict, catalog: dict) -> dict:
    """A copy of the filter configuration with `catalog` as its `text.catalog`."""
    config = copy.deepcopy(config)
    config.setdefault("text", {})["catalog"] = catalog
    return config


WASM_FILTER = "envoy.filters.http.wasm"
# `text.max_body_bytes` when the filter configuration leaves it out (filter/src/validate).
FILTER_DEFAULT_MAX_BODY_BYTES = 65536
BUFFER_FILTER = {
    "name": "envoy.filters.http.buffer",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer"},
}


def render(params: EnvoyParams, template: Path = TEMPLATE) -> str:
    if params.mesh:
        return _mesh_layout(render(_standalone(params), template), params.filter_config)
    values = {
        "LISTEN_PORT": params.listen_port,
        "ADMIN_PORT": params.admin_port,
        "SIDECAR_PORT": params.sidecar_port,
        "JWKS_PORT": params.jwks_port,
        "RLS_PORT": params.rls_port,
        "XFF_TRUSTED_HOPS": params.xff_trusted_hops,
        "WASM_PATH": str(params.wasm_path),
        "ACCESS_LOG": str(params.access_log),
        "FILTER_CONFIG": json.dumps(params.filter_config, separators=(",", ":")),
    }
    text = Path(template).read_text()
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if unknown:
        raise ValueError(f"{template}: no value for placeholder(s) {', '.join(unknown)}")
    bootstrap = _PLACEHOLDER.sub(lambda m: json.dumps(values[m.group(1)]), text)
    if params.jwt_authn is not None:
        bootstrap = _with_jwt_authn(bootstrap, params.jwt_authn)
    return bootstrap


JWT_AUTHN_FILTER = "envoy.filters.http.jwt_authn"


def _with_jwt_authn(bootstrap: str, jwt_authn: dict) -> str:
    """The bootstrap with Envoy's jwt_authn filter just before the Wasm filter."""
    config = yaml.safe_load(bootstrap)
    for http_filters, position in _wasm_filter_positions(config):
        http_filters.insert(position, {"name": JWT_AUTHN_FILTER, "typed_config": dict(
            {"@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"},
            **jwt_authn)})
    return yaml.safe_dump(config, sort_keys=False)


def _wasm_filter_positions(config: dict):
    """(the HTTP filter list, the index of voxgate's Wasm filter in it) for every chain."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                http_filters = network_filter["typed_config"]["http_filters"]
                [position] = [i for i, f in enumerate(http_filters) if f["name"] == WASM_FILTER]
                yield http_filters, position


def _standalone(params: EnvoyParams) -> EnvoyParams:
    config = dict(params.filter_config, hold_headers_for_body=False)
    return EnvoyParams(**dict(vars(params), filter_config=config, mesh=False))


def _mesh_layout(bootstrap: str, filter_config: dict) -> str:
    """The standalone bootstrap rearranged as envoy/istio/ deploys the filter."""
    config = yaml.safe_load(bootstrap)
    for http_filters, position in _wasm_filter_positions(config):
        del http_filters[position]["typed_config"]["config"]["allow_on_headers_stop_iteration"]
        buffer = copy.deepcopy(BUFFER_FILTER)
        # The filter refuses a larger body first: this limit only has to let the rest pass.
        buffer["typed_config"]["max_request_bytes"] = filter_config.get("text", {}).get(
            "max_body_bytes", FILTER_DEFAULT_MAX_BODY_BYTES)
        http_filters.insert(position + 1, buffer)
    return yaml.safe_dump(config, sort_keys=False)


def write(params: EnvoyParams, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(params))
    return out


def validate(config_path: Path, envoy: Path = ENVOY, timeout: float = 60) -> subprocess.CompletedProcess:
    """`envoy --mode validate`: loads the wasm module and runs the filter's on_configure, serves nothing."""
    return subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart",
         "--log-level", "warn"],
        capture_output=True, text=True, timeout=timeout, check=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render the voxgate Envoy bootstrap.")
    parser.add_argument("--out", required=True, type=Path, help="where to write the YAML")
    parser.add_argument("--filter-config", type=Path, default=FILTER_CONFIG,
                        help="filter configuration JSON (default envoy/filter-config.json)")
    parser.add_argument("--keys-dir", default=devkeys.keys_dir(),
                        help="dev key folder whose JWKS goes into the dev provider "
                             "(default: $VOXGATE_KEYS_DIR, else .deps/keys)")
    parser.add_argument("--mesh", action="store_true",
                        help="the filter chain of the Istio deployment (WasmPlugin + buffer filter)")
    parser.add_argument("--validate", action="store_true", help="then run envoy --mode validate on it")
    args = parser.parse_args(argv)

    jwks = devkeys.ensure_keys(args.keys_dir).jwks()
    params = EnvoyParams.from_env(filter_config(jwks, args.filter_config),
                                  access_log=args.out.parent / "envoy-access.log", mesh=args.mesh)
    write(params, args.out)
    print(args.out)
    if args.validate:
        result = validate(args.out)
        sys.stderr.write(result.stdout + result.stderr)
        return result.returncode
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

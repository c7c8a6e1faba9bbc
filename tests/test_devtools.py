"""Dev keys, dev tokens and the rendered Envoy bootstrap, checked independently of the filter:
tokens against PyJWT, configurations against Envoy's own validation."""

import hashlib
import hmac
import json
import stat
import subprocess
import sys

import jwt
import pytest
import yaml

from tools import devkeys, devtoken, render_envoy

REPO_ROOT = render_envoy.REPO_ROOT
ISTIO_MANIFEST = REPO_ROOT / "envoy" / "istio" / "wasmplugin.yaml"
ISTIO_JWT_AUTHN_MANIFEST = REPO_ROOT / "envoy" / "istio" / "jwt-authn.yaml"
K8S_RATELIMIT = REPO_ROOT / "envoy" / "k8s" / "ratelimit.yaml"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return devkeys.ensure_keys(tmp_path_factory.mktemp("keys"))


def verify(token: str, keys: devkeys.DevKeys, alg: str, **options) -> dict:
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(keys.jwks())[kid]
    return jwt.decode(token, key=key, algorithms=[alg], audience=devtoken.DEV_AUDIENCE,
                      issuer=devtoken.DEV_ISSUER, **options)


def test_keys_are_created_once_and_kept_private(keys):
    again = devkeys.ensure_keys(keys.folder)
    assert {a: k.kid for a, k in again.keys.items()} == {a: k.kid for a, k in keys.keys.items()}
    for name in devkeys.KEY_FILES.values():
        assert stat.S_IMODE((keys.folder / name).stat().st_mode) == 0o600
    published = json.loads(keys.jwks_path.read_text())
    assert {k["alg"] for k in published["keys"]} == set(devkeys.ALGORITHMS)
    assert all("d" not in k for k in published["keys"]), "a private key component was published"
    assert len({k["kid"] for k in published["keys"]}) == len(devkeys.ALGORITHMS)


def test_jwks_without_hmac_leaves_the_shared_secret_out(keys):
    assert {k["kty"] for k in keys.jwks(include_hmac=False)["keys"]} == {"EC", "RSA", "OKP"}


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256", "EdDSA", "HS256"])
def test_tokens_verify_with_the_published_keys(keys, alg):
    claims = verify(devtoken.mint(alg=alg, keys=keys, sub="carol", plan="pro"), keys, alg)
    assert (claims["sub"], claims["scope"], claims["plan"]) == ("carol", "tts", "pro")
    assert claims["exp"] - claims["iat"] == devtoken.DEFAULT_TTL_SECONDS


def test_time_claims_are_relative_to_now(keys):
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(devtoken.mint(keys=keys, exp=-120), keys, "ES256")
    with pytest.raises(jwt.ImmatureSignatureError):
        verify(devtoken.mint(keys=keys, nbf=300), keys, "ES256")


def test_claims_set_to_none_are_left_out(keys):
    token = devtoken.mint(keys=keys, aud=None, scope=None, plan=None, exp=None)
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) == {"iss", "sub", "iat"}


def test_alg_none_has_an_empty_signature_and_no_kid():
    token = devtoken.mint(alg="none")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "none", "typ": "JWT"}
    assert token.endswith(".")


def test_hmac_can_be_signed_with_a_public_key_as_secret(keys):
    """The algorithm-confusion token the filter must refuse: HS256 keyed by the RSA public key."""
    public_pem = keys.key("RS256").private.public_key().public_bytes(
        devkeys.serialization.Encoding.PEM, devkeys.serialization.PublicFormat.SubjectPublicKeyInfo)
    token = devtoken.mint(alg="HS256", kid=keys.key("RS256").kid, signing_key=public_pem)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT", "kid": keys.key("RS256").kid}
    signing_input, signature = token.rsplit(".", 1)
    expected = hmac.new(public_pem, signing_input.encode("ascii"), hashlib.sha256).digest()
    assert signature == devkeys.b64url(expected)


def test_cli_prints_a_token_with_the_requested_claims(keys):
    out = subprocess.run(
        [sys.executable, "-m", "tools.devtoken", "--sub", "dave", "--exp", "-5", "--aud", "",
         "--alg", "RS256", "--keys-dir", str(keys.folder)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    payload = jwt.decode(out, options={"verify_signature": False})
    assert payload["sub"] == "dave" and "aud" not in payload and payload["exp"] < payload["iat"]
    assert jwt.get_unverified_header(out)["kid"] == keys.key("RS256").kid


def rendered(tmp_path, filter_config, **params):
    path = render_envoy.write(
        render_envoy.EnvoyParams(filter_config=filter_config, access_log=tmp_path / "access.log", **params),
        tmp_path / "envoy.yaml")
    return path, yaml.safe_load(path.read_text())


def test_rendered_bootstrap_carries_ports_and_filter_config(keys, tmp_path):
    config = render_envoy.filter_config(keys.jwks())
    _, bootstrap = rendered(tmp_path, config, listen_port=10100, admin_port=10101, sidecar_port=10102,
                            jwks_port=10103, rls_port=10104)
    assert bootstrap["admin"]["address"]["socket_address"]["port_value"] == 10101
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10100}
    wasm = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]
    plugin = wasm["typed_config"]["config"]
    assert plugin["failure_policy"] == "FAIL_CLOSED"
    assert json.loads(plugin["configuration"]["value"]) == config
    dev = [p for p in config["auth"]["providers"] if p["name"] == "dev"][0]
    assert dev["jwks"] == keys.jwks()
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    ports = {name: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
             ["socket_address"]["port_value"] for name, c in clusters.items()}
    assert ports == {"voxgate_sidecar": 10102, "jwks": 10103, "voxgate_rls": 10104}
    assert "http2_protocol_options" in json.dumps(clusters["voxgate_rls"]), "gRPC needs HTTP/2"


def test_envoy_accepts_the_default_bootstrap(keys, tmp_path):
    path, _ = rendered(tmp_path, render_envoy.filter_config(keys.jwks()))
    result = render_envoy.validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def istio_documents():
    return list(yaml.safe_load_all(ISTIO_MANIFEST.read_text()))


def test_istio_plugin_config_matches_the_local_one_except_providers():
    plugin = istio_documents()[0]
    assert plugin["kind"] == "WasmPlugin"
    assert (plugin["spec"]["phase"], plugin["spec"]["failStrategy"]) == ("AUTHN", "FAIL_CLOSE")
    istio, local = dict(plugin["spec"]["pluginConfig"]), json.loads(render_envoy.FILTER_CONFIG.read_text())
    assert istio.pop("hold_headers_for_body") is False, "WasmPlugin cannot hold headers for a body"
    istio["rate_limits"] = dict(istio["rate_limits"])
    assert istio["rate_limits"].pop("cluster")["service"].startswith("outbound|"), "limits across replicas"
    assert set(istio) == set(local)
    for section in local:
        if section == "auth":
            strip = lambda auth: {k: v for k, v in auth.items() if k != "providers"}  # noqa: E731
            assert strip(istio["auth"]) == strip(local["auth"])
        else:
            assert istio[section] == local[section], section


def test_the_rate_limit_service_counts_with_the_plugin_config_and_is_the_cluster_it_names():
    documents = {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(K8S_RATELIMIT.read_text())}
    plugin_config = istio_documents()[0]["spec"]["pluginConfig"]
    config_map = documents["ConfigMap/voxgate-rls-config"]
    assert json.loads(config_map["data"]["filter-config.json"]) == plugin_config, "one set of limits"
    deployment = documents["Deployment/voxgate-rls"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    [mount] = container["volumeMounts"]
    assert f"--config={mount['mountPath']}/filter-config.json" in container["args"]
    service = documents["Service/voxgate-rls"]
    [port] = service["spec"]["ports"]
    assert port["appProtocol"] == "grpc", "Istio's outbound cluster must speak HTTP/2"
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert plugin_config["rate_limits"]["cluster"]["service"] == f"outbound|{port['port']}||{host}"
    redis = documents["Service/voxgate-redis"]
    redis_host = f"{redis['metadata']['name']}.{redis['metadata']['namespace']}.svc.cluster.local"
    assert f"--redis=redis://{redis_host}:{redis['spec']['ports'][0]['port']}/0" in container["args"]
    assert "--appendonly" in documents["StatefulSet/voxgate-redis"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_envoy_accepts_the_istio_plugin_config(tmp_path):
    plugin_config = istio_documents()[0]["spec"]["pluginConfig"]
    path, _ = rendered(tmp_path, plugin_config, mesh=True)
    result = render_envoy.validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_istio_jwt_authn_manifest_differs_only_in_its_provider_and_phase(tmp_path):
    authentication, plugin = yaml.safe_load_all(ISTIO_JWT_AUTHN_MANIFEST.read_text())
    assert authentication["kind"] == "RequestAuthentication"
    [rule] = authentication["spec"]["jwtRules"]
    assert plugin["spec"]["phase"] == "AUTHZ", "after Istio's jwt_authn"
    config = plugin["spec"]["pluginConfig"]
    [provider] = config["auth"]["providers"]
    assert (provider["issuer"], provider["jwt_authn"]["payload_in_metadata"]) == (rule["issuer"],) * 2, \
        "Istio keys the payload by its issuer"
    standalone = istio_documents()[0]["spec"]["pluginConfig"]
    without_providers = lambda c: dict(c, auth={k: v for k, v in c["auth"].items() if k != "providers"})  # noqa: E731
    assert without_providers(config) == without_providers(standalone)
    path, _ = rendered(tmp_path, config, mesh=True)
    result = render_envoy.validate(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mesh_rendering_is_the_istio_filter_chain(tmp_path):
    """The chain tests/test_filter_mesh.py runs is the one the Istio manifests build."""
    [buffer_patch] = [d for d in istio_documents() if d["kind"] == "EnvoyFilter"]
    [patch] = buffer_patch["spec"]["configPatches"]
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    plugin_config = istio_documents()[0]["spec"]["pluginConfig"]
    _, bootstrap = rendered(tmp_path, plugin_config, mesh=True)
    chain = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    http_filters = chain["typed_config"]["http_filters"]
    assert [f["name"] for f in http_filters] == [
        render_envoy.WASM_FILTER, "envoy.filters.http.buffer", "envoy.filters.http.router"]
    assert http_filters[1] == patch["patch"]["value"]
    assert http_filters[1]["typed_config"]["max_request_bytes"] == plugin_config["text"]["max_body_bytes"]
    wasm = http_filters[0]["typed_config"]["config"]
    assert "allow_on_headers_stop_iteration" not in wasm
    assert json.loads(wasm["configuration"]["value"])["hold_headers_for_body"] is False

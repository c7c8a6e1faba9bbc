"""Dev JWTs for the `dev` provider, for people (`make token`) and for the end-to-end tests.

`mint(...)` signs with the dev keys of `tools.devkeys`. Times are relative to now, so a negative
`exp` gives an already-expired token and a positive `nbf` a not-yet-valid one. Every claim can be
left out (`None`) and every header field overridden, so tests can build the malformed and hostile
tokens they need: `alg: none`, a wrong `kid`, an HMAC signed with a public key as its secret.

(The module is not called `token.py`: that name would shadow Python's own `token` module.)

CLI: `python -m tools.devtoken --sub alice [--exp 3600] [--alg ES256] …` prints one token.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import time

import jwt

from tools import devkeys

DEV_ISSUER = "https://voxgate.local/dev"
DEV_AUDIENCE = "voxgate"
DEFAULT_SCOPE = "tts"
DEFAULT_PLAN = "free"
DEFAULT_TTL_SECONDS = 3600
SIGNING_ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA", "HS256", "none")

_HMAC_DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
# The dev key used for each JWS algorithm (EdDSA signs with the Ed25519 key).
_KEY_FOR_ALG = {"ES256": "ES256", "ES384": "ES384", "RS256": "RS256", "PS256": "PS256",
                "EdDSA": "EdDSA", "HS256": "HS256"}


def _segment(obj: dict) -> str:
    return devkeys.b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def sign(header: dict, payload: dict, key) -> str:
    """Compact JWS for `header["alg"]`: HS* take raw secret bytes, the others a private key.

    HMAC is done here rather than by PyJWT, which (rightly) refuses a PEM public key as an
    HMAC secret; the tests need exactly that token to prove the filter refuses it.
    """
    alg = header["alg"]
    signing_input = f"{_segment(header)}.{_segment(payload)}".encode("ascii")
    if alg == "none":
        signature = b""
    elif alg in _HMAC_DIGESTS:
        signature = hmac.new(key, signing_input, _HMAC_DIGESTS[alg]).digest()
    else:
        algorithm = jwt.get_algorithm_by_name(alg)
        signature = algorithm.sign(signing_input, key)
    return f"{signing_input.decode('ascii')}.{devkeys.b64url(signature)}"


def claims(*, sub: str | None = "alice", exp: int | None = DEFAULT_TTL_SECONDS,
           nbf: int | None = None, iat: int | None = 0, aud=DEV_AUDIENCE,
           iss: str | None = DEV_ISSUER, scope: str | None = DEFAULT_SCOPE,
           plan: str | None = DEFAULT_PLAN, extra: dict | None = None,
           now: int | None = None) -> dict:
    """The payload: `exp`, `nbf` and `iat` are offsets in seconds from `now`; None leaves a claim out."""
    now = int(time.time()) if now is None else now
    payload = {}
    for name, value in (("iss", iss), ("sub", sub), ("aud", aud), ("scope", scope), ("plan", plan)):
        if value is not None:
            payload[name] = value
    for name, offset in (("iat", iat), ("nbf", nbf), ("exp", exp)):
        if offset is not None:
            payload[name] = now + offset
    payload.update(extra or {})
    return payload


def mint(*, alg: str = "ES256", kid: str | None = None, keys: devkeys.DevKeys | None = None,
         signing_key=None, header: dict | None = None, **claim_args) -> str:
    """A signed dev token.

    `kid` defaults to the dev key's id for `alg`; `signing_key` replaces the dev key (a foreign
    key for bad-signature cases, or raw bytes for HMAC); `header` adds or overrides header fields;
    the remaining keyword arguments go to `claims()`.
    """
    if alg not in SIGNING_ALGORITHMS and alg not in _HMAC_DIGESTS:
        raise ValueError(f"unsupported algorithm {alg!r}; use one of {', '.join(SIGNING_ALGORITHMS)}")
    dev_key = None
    if alg != "none" and signing_key is None:
        keys = keys or devkeys.ensure_keys()
        dev_key = keys.key(_KEY_FOR_ALG.get(alg, alg))
    jws_header = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        jws_header["kid"] = kid
    elif dev_key is not None:
        jws_header["kid"] = dev_key.kid
    jws_header.update(header or {})
    key = signing_key if signing_key is not None else (dev_key.private if dev_key else None)
    return sign(jws_header, claims(**claim_args), key)


def _optional(value: str):
    """CLI convention: an empty string leaves the claim out."""
    return None if value == "" else value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Print a dev JWT for the voxgate `dev` provider.",
        epilog="An empty value (e.g. --aud '') leaves that claim out.")
    parser.add_argument("--sub", default="alice", help="subject (default alice)")
    parser.add_argument("--exp", type=int, default=DEFAULT_TTL_SECONDS,
                        help="seconds until expiry; negative = already expired (default 3600)")
    parser.add_argument("--nbf", type=int, default=None,
                        help="not-before, seconds from now (positive = not yet valid)")
    parser.add_argument("--aud", default=DEV_AUDIENCE,
                        help=f"audience; comma-separated for several (default {DEV_AUDIENCE})")
    parser.add_argument("--iss", default=DEV_ISSUER, help=f"issuer (default {DEV_ISSUER})")
    parser.add_argument("--scope", default=DEFAULT_SCOPE,
                        help=f"space-separated scopes (default {DEFAULT_SCOPE!r})")
    parser.add_argument("--plan", default=DEFAULT_PLAN, help=f"plan claim (default {DEFAULT_PLAN})")
    parser.add_argument("--alg", default="ES256", choices=SIGNING_ALGORITHMS,
                        help="signing algorithm (default ES256)")
    parser.add_argument("--kid", default=None, help="override the header kid")
    parser.add_argument("--keys-dir", default=devkeys.keys_dir(),
                        help="dev key folder (default: $VOXGATE_KEYS_DIR, else .deps/keys)")
    args = parser.parse_args(argv)

    aud = _optional(args.aud)
    if aud is not None and "," in aud:
        aud = [a.strip() for a in aud.split(",") if a.strip()]
    keys = devkeys.ensure_keys(args.keys_dir) if args.alg != "none" else None
    print(mint(alg=args.alg, kid=args.kid, keys=keys, sub=_optional(args.sub), exp=args.exp,
               nbf=args.nbf, aud=aud, iss=_optional(args.iss), scope=_optional(args.scope),
               plan=_optional(args.plan)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

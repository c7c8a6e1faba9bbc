"""API keys for the filter's `auth.api_keys` provider: a new random key and the configuration
entry that stands for it, which holds only a salted, peppered hash of the key.

The entry's `hash` is base64url(HMAC-SHA256(pepper, salt ‖ key)), with the pepper read from the
environment variable the configuration's `pepper_env` names (the filter reads the same variable
from its VM's environment). Give the key to its holder once; keep only the entry.

CLI: `VOXGATE_API_KEY_PEPPER=… python -m tools.apikey --id ci --subject ci-bot [--plan pro]
[--scope tts]…` prints the key on stderr's first line and the JSON entry on stdout.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys

PEPPER_ENV = "VOXGATE_API_KEY_PEPPER"
KEY_PREFIX = "sk-"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_key() -> str:
    """An opaque key: `sk-` and 32 random bytes, base64url."""
    return KEY_PREFIX + b64url(secrets.token_bytes(32))


def entry(key: str, *, id: str, subject: str, pepper: str = "", plan: str | None = None,
          scopes: tuple[str, ...] = ("tts",), revoked: bool = False) -> dict:
    """The configuration entry for `key`; the key itself is not in it."""
    salt = secrets.token_bytes(16)
    digest = hmac.new(pepper.encode(), salt + key.encode(), hashlib.sha256).digest()
    out = {"id": id, "salt": b64url(salt), "hash": b64url(digest), "subject": subject, "scopes": list(scopes)}
    if plan is not None:
        out["plan"] = plan
    if revoked:
        out["revoked"] = True
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Mint an API key and its auth.api_keys entry.")
    parser.add_argument("--id", required=True, help="names the key in logs and configuration")
    parser.add_argument("--subject", required=True, help="the identity the key stands for")
    parser.add_argument("--plan", help="the rate-limit plan (default: the configuration's default_plan)")
    parser.add_argument("--scope", action="append", dest="scopes", help="a scope it grants (repeatable)")
    args = parser.parse_args(argv)
    key = new_key()
    print(key, file=sys.stderr)
    record = entry(key, id=args.id, subject=args.subject, pepper=os.environ.get(PEPPER_ENV, ""),
                   plan=args.plan, scopes=tuple(args.scopes or ["tts"]))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Development signing keys for the `dev` JWT provider: generated once, reused afterwards.

`ensure_keys(folder)` creates (only what is missing) one private key per algorithm family and
writes the matching public JWKS to `jwks.json`. Key ids are RFC 7638 thumbprints, so they stay
stable for as long as the key files do. The default folder, `.deps/keys/`, is git-ignored and
survives `make clean`; nothing here is ever committed.

CLI: `python -m tools.devkeys [--dir DIR]` ensures the keys and prints the JWKS path.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KEYS_DIR = REPO_ROOT / ".deps" / "keys"

# JWS algorithm -> file holding its key. RS256 and PS256 get separate RSA keys because a JWK
# names one algorithm and the filter lets the key, not the token, decide the algorithm.
KEY_FILES = {
    "ES256": "es256.pem",
    "ES384": "es384.pem",
    "RS256": "rs256.pem",
    "PS256": "ps256.pem",
    "EdDSA": "ed25519.pem",
    "HS256": "hs256.secret",
}
ALGORITHMS = tuple(KEY_FILES)


@dataclass(frozen=True)
class DevKey:
    """One signing key: its algorithm, key id, private material and public JWK."""

    alg: str
    kid: str
    private: object  # a `cryptography` private key, or the raw HMAC secret (bytes)
    jwk: dict


@dataclass(frozen=True)
class DevKeys:
    """Every dev key in one folder, by algorithm."""

    folder: Path
    keys: dict

    def key(self, alg: str) -> DevKey:
        if alg not in self.keys:
            raise KeyError(f"no dev key for algorithm {alg!r}; known: {', '.join(self.keys)}")
        return self.keys[alg]

    def jwks(self, include_hmac: bool = True) -> dict:
        """The public JWKS; the oct (HS256) key is a shared secret, so it can be left out."""
        return {
            "keys": [k.jwk for k in self.keys.values() if include_hmac or k.jwk["kty"] != "oct"]
        }

    @property
    def jwks_path(self) -> Path:
        return self.folder / "jwks.json"


def keys_dir() -> Path:
    """The dev key folder: $VOXGATE_KEYS_DIR when set, else .deps/keys."""
    return Path(os.environ.get("VOXGATE_KEYS_DIR") or DEFAULT_KEYS_DIR)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: dict) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) over the key's required members."""
    required = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"),
                "OKP": ("crv", "kty", "x"), "oct": ("k", "kty")}[jwk["kty"]]
    canonical = json.dumps({m: jwk[m] for m in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def generate_private(alg: str):
    """A fresh private key (or HMAC secret) for `alg`; also used by tests for foreign keys."""
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "HS256":
        return secrets.token_bytes(32)
    raise ValueError(f"unsupported algorithm {alg!r}")


def public_jwk(alg: str, private) -> dict:
    """The public JWK of a private key (for HS256 the secret itself, as an oct key)."""
    if alg == "HS256":
        jwk = {"kty": "oct", "k": b64url(private)}
    elif alg in ("ES256", "ES384"):
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg in ("RS256", "PS256"):
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk = {k: v for k, v in jwk.items() if k not in ("key_ops", "alg", "kid", "use")}
    jwk.update({"use": "sig", "alg": alg})
    jwk["kid"] = f"dev-{alg.lower()}-{thumbprint(jwk)[:12]}"
    return jwk


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _serialize(alg: str, private) -> bytes:
    if alg == "HS256":
        return b64url(private).encode("ascii") + b"\n"
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _load(alg: str, data: bytes):
    if alg == "HS256":
        text = data.decode("ascii").strip()
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return serialization.load_pem_private_key(data, password=None)


def ensure_keys(folder: Path | str | None = None) -> DevKeys:
    """Load the dev keys from `folder` (default `keys_dir()`), generating any that are missing,
    and (re)write jwks.json."""
    folder = Path(folder) if folder is not None else keys_dir()
    folder.mkdir(parents=True, exist_ok=True)
    keys = {}
    for alg, name in KEY_FILES.items():
        path = folder / name
        if not path.exists():
            try:
                _write_private(path, _serialize(alg, generate_private(alg)))
            except FileExistsError:
                pass  # a concurrent caller created it first; use theirs
        private = _load(alg, path.read_bytes())
        jwk = public_jwk(alg, private)
        keys[alg] = DevKey(alg=alg, kid=jwk["kid"], private=private, jwk=jwk)
    dev = DevKeys(folder=folder, keys=keys)
    text = json.dumps(dev.jwks(), indent=2) + "\n"
    if not dev.jwks_path.exists() or dev.jwks_path.read_text() != text:
        tmp = dev.jwks_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(dev.jwks_path)
    return dev


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Create (once) the voxgate dev signing keys.")
    parser.add_argument("--dir", default=keys_dir(),
                        help="key folder (default: $VOXGATE_KEYS_DIR, else .deps/keys)")
    args = parser.parse_args(argv)
    print(ensure_keys(args.dir).jwks_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

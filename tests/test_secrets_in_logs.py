"""After the whole suite: no log that Envoy or a sidecar wrote during the test session holds a
token, a signing secret or a submitted text.

The module is marked `session_end`, and conftest.py moves every such test behind all the others
that were collected, wherever its file stands on the command line, so the scan sees the logs of
the whole session.

Scanned: every `*.log` file under the session's temporary folder, which is where the harness,
the launcher test and the hardening tests keep every process's output and every Envoy access
log. Looked for:
- tokens: anything shaped like a JWT (`eyJ…` header segment, then a dot), so every token minted
  in the session is covered without recording them;
- signing secrets: for every dev key folder the session used (and `.deps/keys`), the HMAC secret
  (as stored, in hex and in standard base64), each base64 line of the private-key PEM files, and
  the private JWK members (`d`, `p`, `q`, …) of each key;
- submitted text: the marker word every hardening test puts in the texts it submits.

Run alone, the test still proves something: it first sends canary requests of its own (a
spoken text, a refused text, a Coqui query-string text, a text after an encoded `?` in the
path, a forged and an expired token) and
checks that they did leave their traces (an access-log entry, a refusal line) in the logs
it then scans.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from harness import PIPER_VOICE
from hostile_cases import MARKER
from tools import devkeys

pytestmark = pytest.mark.session_end

JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.")
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
SHORTEST_SECRET = 16
ACCESS_LOG_WAIT_S = 20
TIMEOUT = 60


def key_folders(root: Path) -> list[Path]:
    folders = {p.parent for p in root.rglob("hs256.secret")}
    folders.add(devkeys.DEFAULT_KEYS_DIR)
    return sorted(f for f in folders if (f / "hs256.secret").exists())


def private_jwk(private) -> dict:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return ECAlgorithm.to_jwk(private, as_dict=True)
    if isinstance(private, rsa.RSAPrivateKey):
        return RSAAlgorithm.to_jwk(private, as_dict=True)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return OKPAlgorithm.to_jwk(private, as_dict=True)
    return {}


def secrets_of(folder: Path) -> dict:
    """name -> secret text, for every private value in a dev key folder (read, never created)."""
    found = {}
    stored = (folder / "hs256.secret").read_text().strip()
    hmac_secret = base64.urlsafe_b64decode(stored + "=" * (-len(stored) % 4))
    found[f"{folder}/hs256.secret"] = stored
    found[f"{folder}/hs256.secret (hex)"] = hmac_secret.hex()
    found[f"{folder}/hs256.secret (base64)"] = base64.b64encode(hmac_secret).decode().rstrip("=")
    for path in sorted(folder.glob("*.pem")):
        pem = path.read_bytes()
        for number, line in enumerate(pem.decode().splitlines(), start=1):
            if not line.startswith("-----") and len(line) >= SHORTEST_SECRET:
                found[f"{path} line {number}"] = line
        jwk = private_jwk(serialization.load_pem_private_key(pem, password=None))
        for member in PRIVATE_JWK_MEMBERS:
            if member in jwk:
                found[f"{path} private JWK `{member}`"] = jwk[member]
    return found


def findings(path: Path, text: str, secrets: dict) -> list[str]:
    """What `text` leaks, named without repeating the leaked value."""
    name_of = {value: name for name, value in secrets.items()}
    any_secret = re.compile("|".join(re.escape(v) for v in sorted(name_of, key=len, reverse=True)))
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{number}"
        if JWT_SHAPE.search(line):
            found.append(f"{where}: a JWT")
        if MARKER in line.lower():
            found.append(f"{where}: submitted text (marker `{MARKER}`)")
        found += [f"{where}: signing secret {name_of[m.group(0)]}" for m in any_secret.finditer(line)]
    return found


def send_canaries(stack) -> str:
    """Requests whose traces the scan must find (and whose tokens and texts it must not);
    returns their subject."""
    canary = f"canary-{uuid.uuid4().hex[:10]}"
    good = stack.token(sub=canary)
    bodies = {
        "spoken": {"model": "tts-1", "input": f"The {MARKER} canary sings.", "voice": PIPER_VOICE},
        "refused": {"model": "tts-1", "input": f"The {MARKER}\u202e canary hides.", "voice": PIPER_VOICE},
    }
    statuses = {}
    for name, body in bodies.items():
        statuses[name] = requests.post(f"{stack.url}/v1/audio/speech", json=body, timeout=TIMEOUT,
                                       headers={"Authorization": f"Bearer {good}"}).status_code
    statuses["coqui_query"] = requests.get(f"{stack.url}/api/tts", params={"text": f"A {MARKER} in the query."},
                                           headers={"Authorization": f"Bearer {good}"}, timeout=TIMEOUT).status_code
    # `%3F` is no query separator: what follows it is part of the path Envoy sees.
    statuses["encoded_query"] = requests.get(f"{stack.url}/api/tts%3Ftext=A%20{MARKER}%20in%20the%20path",
                                             headers={"Authorization": f"Bearer {good}"},
                                             timeout=TIMEOUT).status_code
    forged = stack.token(sub=canary, signing_key=devkeys.generate_private("ES256"))
    expired = stack.token(sub=canary, exp=-3600)
    for name, token in (("forged", forged), ("expired", expired)):
        statuses[name] = requests.get(f"{stack.url}/v1/models", headers={"Authorization": f"Bearer {token}"},
                                      timeout=TIMEOUT).status_code
    assert statuses == {"spoken": 200, "refused": 400, "coqui_query": 200, "encoded_query": 400,
                        "forged": 401, "expired": 401}, statuses
    return canary


def test_the_scan_recognises_each_kind_of_leak(stack):
    secrets = secrets_of(stack.keys.folder)
    token = stack.token(sub="scan-check")
    pem_line = next(value for name, value in secrets.items() if "es256.pem line" in name)
    text = "\n".join([f"authorization: Bearer {token}", f"input={MARKER.upper()} text", f"key {pem_line}", "clean"])
    found = findings(Path("probe.log"), text, secrets)
    assert [f.split(": ", 1)[1] for f in found] == [
        "a JWT", f"submitted text (marker `{MARKER}`)", f"signing secret {stack.keys.folder}/es256.pem line 2"]
    assert not any(pem_line in f or token in f for f in found), "findings never repeat the leaked value"


def test_no_log_holds_a_token_a_secret_or_a_submitted_text(stack, tmp_path_factory):
    canary = send_canaries(stack)
    deadline = time.monotonic() + ACCESS_LOG_WAIT_S
    while sum(e.get("subject") == canary for e in stack.envoy.access_log()) < 3:
        assert time.monotonic() < deadline, "Envoy did not write the canaries to its access log"
        time.sleep(0.5)
    assert f"subject={canary}" in stack.envoy.log_text(), "the refusal of the canary text is logged"

    root = tmp_path_factory.getbasetemp()
    logs = sorted(root.rglob("*.log"))
    names = {p.name for p in logs}
    assert {"envoy.log", "sidecar.log", "access.log"} <= names, names
    secrets = {}
    for folder in key_folders(root):
        secrets.update(secrets_of(folder))
    assert any("hs256.secret" in name for name in secrets)

    leaks = []
    for path in logs:
        leaks += findings(path, path.read_text(errors="replace"), secrets)
    assert leaks == [], "\n".join(leaks[:50])
    print(f"\nsecrets scan: {len(logs)} log files, {sum(p.stat().st_size for p in logs)} bytes, "
          f"{len(secrets)} secrets from {len(key_folders(root))} key folders: nothing found")

"""End-to-end test harness: real sidecar and real Envoy processes, dev tokens, metrics readers.

Used through the fixtures in tests/conftest.py (`stack`, `envoy_factory`).
"""

from harness.jwks_server import JwksServer
from harness.ports import free_port
from harness.prometheus import Metrics, Sample, parse
from harness.services import Envoy, Sidecar
from harness.stack import COQUI_VOICES, PIPER_VOICE, Stack

__all__ = ["COQUI_VOICES", "PIPER_VOICE", "Envoy", "JwksServer", "Metrics", "Sample", "Sidecar",
           "Stack", "free_port", "parse"]

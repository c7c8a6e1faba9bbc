#!/usr/bin/env bash
# Installs what `make bench` needs beyond `make setup`, idempotently: the load generator wrk
# (Debian package) for the filter benchmarks, and piper-tts, the reference the sidecar is
# measured against, in its own venv (.deps/bench-venv, git-ignored) pinned by
# bench/requirements.txt, so it never mixes with the test venv. It uses the Joe voice files
# that `make setup` put in .deps/voices.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg-query -W -f='${Status}' wrk 2>/dev/null | grep -q "install ok installed"; then
  echo "bench: installing the Debian package wrk"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # Through env: sudo would drop a variable set in front of it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
command -v wrk >/dev/null || { echo "bench: wrk is not on PATH after installing it" >&2; exit 1; }

venv=.deps/bench-venv
stamp="$venv/.requirements"
if ! cmp -s bench/requirements.txt "$stamp" 2>/dev/null; then
  echo "bench: installing piper-tts into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r bench/requirements.txt
  cp bench/requirements.txt "$stamp"
fi
# The benchmarks start `python -m piper.http_server`; fail here, not halfway through a run.
"$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("piper.http_server") is None)' \
  || { echo "bench: piper.http_server is missing from $venv" >&2; exit 1; }
"$venv/bin/python" -c 'import flask, piper' || { echo "bench: piper-tts[http] is incomplete in $venv" >&2; exit 1; }

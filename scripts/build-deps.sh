#!/usr/bin/env bash
# Prints the Debian packages the llama.cpp build still needs, one name a line; nothing when all are there.
# `scripts/setup.sh` installs what this prints; `cli/tests/setup_detect.rs` tests the decision.
#
# Each need is decided by what the build really uses, never by a loose file glob (the image ships
# libclang-cpp.so.14, the C++ library, which bindgen cannot use):
#   cmake         the `cmake` command (llama-cpp-sys-2 drives CMake)
#   g++           a C++ compiler, `c++`
#   libclang-dev  bindgen dlopens the C library libclang.so and needs clang's builtin headers. Where dpkg
#                 is the package manager, the installed state of libclang-dev, or of a versioned
#                 libclang-N-dev, decides. Elsewhere the exact library file decides: libclang.so,
#                 libclang-N.so or libclang.so.N in $LIBCLANG_PATH or the usual library folders.
#
# Seams for the test (defaults are the real thing):
#   RBEE_DPKG_QUERY     the dpkg-query command to ask; "none" to behave as on a machine without dpkg
#   RBEE_LIBCLANG_DIRS  space-separated folders searched for the library when there is no dpkg
set -euo pipefail

dpkg_query="${RBEE_DPKG_QUERY:-dpkg-query}"
if [ "$dpkg_query" != "none" ] && ! command -v "$dpkg_query" >/dev/null 2>&1; then
  dpkg_query="none"
fi

# `installed` when dpkg holds the package fully installed (not removed, not config-files only).
dpkg_installed() {
  [ "$("$dpkg_query" -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

# True when a versioned libclang-N-dev is fully installed (not libclang-cppN-dev, the C++ library).
dpkg_versioned_libclang_dev() {
  "$dpkg_query" -W -f='${db:Status-Status} ${Package}\n' 'libclang-*-dev' 2>/dev/null |
    grep -Eq '^installed libclang-[0-9]+-dev$'
}

# True when a folder holds the C library bindgen loads (the names clang-sys accepts, minus libclang-cpp).
libclang_file_in() {
  local dir="$1" f base
  for f in "$dir"/libclang.so "$dir"/libclang.so.* "$dir"/libclang-*.so "$dir"/libclang-*.so.*; do
    [ -e "$f" ] || continue
    base="$(basename "$f")"
    case "$base" in
      libclang-cpp*) continue ;;
    esac
    return 0
  done
  return 1
}

have_libclang() {
  if [ "$dpkg_query" != "none" ]; then
    dpkg_installed libclang-dev || dpkg_versioned_libclang_dev
    return
  fi
  local dirs="${RBEE_LIBCLANG_DIRS:-}"
  if [ -z "$dirs" ]; then
    dirs="${LIBCLANG_PATH:-} /usr/lib /usr/lib64 /usr/local/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu"
    for d in /usr/lib/llvm-*/lib /usr/lib64/llvm*/lib; do
      [ -d "$d" ] && dirs="$dirs $d"
    done
  fi
  local d
  for d in $dirs; do
    [ -n "$d" ] && [ -d "$d" ] && libclang_file_in "$d" && return 0
  done
  return 1
}

command -v cmake >/dev/null 2>&1 || echo cmake
command -v c++ >/dev/null 2>&1 || echo g++
have_libclang || echo libclang-dev

//! The setup decision (`scripts/build-deps.sh`, run by `make setup`): which apt packages the llama.cpp
//! build still needs. It must not be fooled by `libclang-cpp` (the C++ library Debian images ship)
//! standing in for `libclang.so`, the C library bindgen loads. Each case runs the real script against
//! a made-up machine: a fake `dpkg-query` answering from a package list, or library folders.

use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    rbee_testkit::paths::workspace_root().join("scripts/build-deps.sh")
}

/// A `dpkg-query -W -f=FORMAT PATTERN` that answers from `state`, lines of `<status> <package>`.
fn fake_dpkg(dir: &Path, state: &[(&str, &str)]) -> PathBuf {
    let lines: String = state.iter().map(|(status, pkg)| format!("{status} {pkg}\n")).collect();
    std::fs::write(dir.join("dpkg-state"), lines).expect("state");
    let bin = dir.join("dpkg-query");
    std::fs::write(
        &bin,
        r#"#!/usr/bin/env bash
fmt="${2#-f=}"; pat="$3"; found=1
while read -r status pkg; do
  case "$pkg" in $pat)
    found=0
    out="${fmt//'${db:Status-Status}'/$status}"
    out="${out//'${Package}'/$pkg}"
    printf "$out" ;;
  esac
done < "$(dirname "$0")/dpkg-state"
[ $found -eq 0 ] || echo "dpkg-query: no packages found matching $pat" >&2
exit $found
"#,
    )
    .expect("fake dpkg-query");
    Command::new("chmod").arg("+x").arg(&bin).status().expect("chmod");
    bin
}

/// The packages the script says to install.
fn decide(dpkg: &str, libclang_dirs: &str) -> Vec<String> {
    let out = Command::new("bash")
        .arg(script())
        .env("RBEE_DPKG_QUERY", dpkg)
        .env("RBEE_LIBCLANG_DIRS", libclang_dirs)
        .env_remove("LIBCLANG_PATH")
        .output()
        .expect("build-deps.sh runs");
    assert!(out.status.success(), "build-deps.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

fn libdir(root: &Path, files: &[&str]) -> PathBuf {
    let dir = root.join(format!("lib{}", files.len()));
    std::fs::create_dir_all(&dir).expect("libdir");
    for f in files {
        std::fs::write(dir.join(f), b"\x7fELF").expect("lib file");
    }
    dir
}

#[test]
fn dpkg_with_only_libclang_cpp_installs_libclang_dev() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The project image: libclang-cpp14 installed; libclang-dev and friends removed (config files left).
    let dpkg = fake_dpkg(
        tmp.path(),
        &[
            ("installed", "libclang-cpp14"),
            ("installed", "libclang-cpp14-dev"),
            ("config-files", "libclang-14-dev"),
            ("config-files", "libclang1-14"),
            ("not-installed", "libclang-dev"),
        ],
    );
    // Even with a folder holding libclang-cpp.so.14, dpkg's answer decides.
    let dir = libdir(tmp.path(), &["libclang-cpp.so.14"]);
    let need = decide(dpkg.to_str().expect("utf-8"), dir.to_str().expect("utf-8"));
    assert!(need.contains(&"libclang-dev".to_owned()), "must install libclang-dev, decided {need:?}");
}

#[test]
fn dpkg_with_a_versioned_libclang_dev_needs_nothing_more() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dpkg = fake_dpkg(tmp.path(), &[("installed", "libclang-cpp14"), ("installed", "libclang-14-dev")]);
    let need = decide(dpkg.to_str().expect("utf-8"), "");
    assert!(!need.contains(&"libclang-dev".to_owned()), "libclang-14-dev is enough, decided {need:?}");

    let dpkg = fake_dpkg(tmp.path(), &[("installed", "libclang-dev")]);
    let need = decide(dpkg.to_str().expect("utf-8"), "");
    assert!(!need.contains(&"libclang-dev".to_owned()), "libclang-dev is installed, decided {need:?}");
}

#[test]
fn without_dpkg_libclang_cpp_alone_is_not_libclang() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = libdir(tmp.path(), &["libclang-cpp.so.14", "libclang-cpp.so"]);
    let need = decide("none", dir.to_str().expect("utf-8"));
    assert!(need.contains(&"libclang-dev".to_owned()), "libclang-cpp is not libclang, decided {need:?}");
}

#[test]
fn without_dpkg_the_c_library_is_enough() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for names in [&["libclang-cpp.so.14", "libclang.so.1"][..], &["libclang-14.so"], &["libclang.so"]] {
        let dir = libdir(tmp.path(), names);
        let need = decide("none", dir.to_str().expect("utf-8"));
        assert!(!need.contains(&"libclang-dev".to_owned()), "{names:?} hold libclang, decided {need:?}");
        std::fs::remove_dir_all(dir).expect("clean");
    }
}

//! Where `rbee up` finds things without PATH: the project root (holding `.venv/bin/nats-server` and
//! `.rbee/models/`), and the daemons next to the running `rbee` executable.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The nats-server `make setup` installs, relative to the root.
pub const NATS_SERVER: &str = ".venv/bin/nats-server";
/// The model `make setup` installs, relative to the root.
pub const DEFAULT_MODEL_FILE: &str = ".rbee/models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$RBEE_HOME`, else the first directory holding `.venv/bin/nats-server` or a workspace `Cargo.toml`,
/// walking up from the current directory, then from the executable's directory.
pub fn find_root(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    if let Some(home) = env("RBEE_HOME") {
        let home = PathBuf::from(home);
        if !home.is_dir() {
            bail!("RBEE_HOME={} is not a directory", home.display());
        }
        return Ok(home);
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)),
    ];
    // A directory set up by `make setup` wins over a bare workspace (another Rust project, say).
    let tests: [fn(&Path) -> bool; 2] = [|dir| dir.join(NATS_SERVER).is_file(), is_workspace];
    for test in tests {
        for start in starts.iter().flatten() {
            if let Some(root) = start.ancestors().find(|dir| test(dir)) {
                return Ok(root.to_path_buf());
            }
        }
    }
    bail!(
        "cannot find the rbee project (a directory with {NATS_SERVER} or a workspace Cargo.toml) above the \
         current directory or the rbee executable: run from inside the project or set RBEE_HOME"
    )
}

fn is_workspace(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|text| text.lines().any(|line| line.trim() == "[workspace]"))
}

/// `<root>/.rbee/data`
pub fn default_data_dir(root: &Path) -> PathBuf {
    root.join(".rbee/data")
}

/// A daemon binary next to the running `rbee` (`target/release/rbee-queen`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build it next to rbee (`make up` does, or `cargo build --release --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// How a person runs this `rbee` from any shell: `rbee` when the first `rbee` on `path_var` (`$PATH`) is
/// this executable (after `make install`, say), else this executable's absolute path, which works when
/// pasted anywhere.
pub fn rbee_command(exe: &Path, path_var: Option<&std::ffi::OsStr>) -> String {
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    let on_path = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("rbee"))
        .find(|candidate| candidate.is_file())
        .and_then(|candidate| std::fs::canonicalize(candidate).ok());
    if on_path.as_deref() == Some(exe.as_path()) {
        "rbee".to_owned()
    } else {
        exe.display().to_string()
    }
}

/// A file `make setup` installs, or an error saying to run it.
pub fn setup_file(root: &Path, relative: &str) -> anyhow::Result<PathBuf> {
    let path = root.join(relative);
    if !path.is_file() {
        bail!("{} is missing: run `make setup` in {}", path.display(), root.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_manifest_marks_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!is_workspace(dir.path()));
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").expect("write");
        assert!(!is_workspace(dir.path()));
        std::fs::write(dir.path().join("Cargo.toml"), "[workspace]\nmembers = []\n").expect("write");
        assert!(is_workspace(dir.path()));
        let home = dir.path().to_string_lossy().into_owned();
        assert_eq!(
            find_root(&|name| (name == "RBEE_HOME").then(|| home.clone())).ok(),
            Some(dir.path().into())
        );
    }

    #[test]
    fn the_banner_says_rbee_only_when_path_finds_this_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let release = dir.path().join("target/release");
        let bin = dir.path().join("bin");
        let other = dir.path().join("other");
        for d in [&release, &bin, &other] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let exe = release.join("rbee");
        std::fs::write(&exe, b"").expect("exe");
        let full = std::fs::canonicalize(&exe).expect("canonical").display().to_string();

        // Not on PATH at all, or another rbee comes first: the absolute path.
        assert_eq!(rbee_command(&exe, None), full);
        assert_eq!(rbee_command(&exe, Some(other.as_os_str())), full);
        std::fs::write(other.join("rbee"), b"").expect("other rbee");
        let path = std::env::join_paths([&other, &bin]).expect("join");
        std::os::unix::fs::symlink(&exe, bin.join("rbee")).expect("symlink");
        assert_eq!(rbee_command(&exe, Some(&path)), full);

        // `make install`'s link first on PATH: plain `rbee`.
        let path = std::env::join_paths([&bin, &other]).expect("join");
        assert_eq!(rbee_command(&exe, Some(&path)), "rbee");
    }
}

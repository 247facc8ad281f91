//! The layered configuration: built-in defaults, then a TOML file, then `RBEE_*` environment variables,
//! then command-line flags. Every value remembers where it came from, so `rbee config show` can say so.
//! The API key is never printed.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

/// Where the queen listens unless told otherwise.
pub const DEFAULT_QUEEN_URL: &str = "http://127.0.0.1:7833";
/// Where NATS listens unless told otherwise.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// The model `make setup` installs and `rbee up` imports.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// Keys a config file may hold; anything else is refused by name.
pub const KNOWN_KEYS: [&str; 5] = ["queen_url", "api_key", "nats_url", "default_model", "data_dir"];

/// The command-line flags that override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--config`
    pub config: Option<PathBuf>,
    /// `--queen`
    pub queen_url: Option<String>,
    /// `--nats-url`
    pub nats_url: Option<String>,
    /// `--data-dir` (only `rbee up` has it)
    pub data_dir: Option<PathBuf>,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built in.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// A command-line flag.
    Flag(&'static str),
    /// The files of a running `rbee up --secure`.
    Secure(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Secure(path) => write!(f, "secure mode {}", path.display()),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Setting<T> {
    /// The value.
    pub value: T,
    /// Its origin.
    pub source: Source,
}

impl<T> Setting<T> {
    fn new(value: T, source: Source) -> Self {
        Self { value, source }
    }

    /// True when someone set it (file, environment or flag), false for the built-in default.
    pub fn is_explicit(&self) -> bool {
        self.source != Source::Default
    }
}

/// The effective configuration.
#[derive(Clone)]
pub struct Config {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The queen's base URL (`http://127.0.0.1:7833`).
    pub queen_url: Setting<String>,
    /// Sent as `Authorization: Bearer` when set. Never printed.
    pub api_key: Setting<Option<String>>,
    /// The NATS server.
    pub nats_url: Setting<String>,
    /// The model `infer` and `up` use when none is named.
    pub default_model: Setting<String>,
    /// Where `rbee up` keeps its state; `None` means `<project>/.rbee/data`.
    pub data_dir: Setting<Option<PathBuf>>,
    /// Who the CLI is on NATS in secure mode (`RBEE_NATS_USER` and friends, or the `cli.env` of a
    /// running `rbee up --secure`). Never printed.
    pub nats_identity: Option<Setting<NatsIdentity>>,
}

/// A NATS identity: user, password, reply inbox prefix and the CA to trust.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsIdentity {
    /// NATS user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Its reply inbox prefix.
    pub inbox_prefix: Option<String>,
    /// CA certificate (PEM) of the server.
    pub ca: Option<PathBuf>,
}

impl NatsIdentity {
    /// From `RBEE_NATS_USER`, `RBEE_NATS_PASSWORD` (both needed), `RBEE_NATS_INBOX_PREFIX` and
    /// `RBEE_NATS_CA`, read through `get` (the environment, or an env file).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let (user, password) = get("RBEE_NATS_USER").zip(get("RBEE_NATS_PASSWORD"))?;
        Some(Self {
            user,
            password,
            inbox_prefix: get("RBEE_NATS_INBOX_PREFIX"),
            ca: get("RBEE_NATS_CA").map(PathBuf::from),
        })
    }
}

impl fmt::Debug for NatsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsIdentity")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("inbox_prefix", &self.inbox_prefix)
            .field("ca", &self.ca)
            .finish()
    }
}

impl fmt::Debug for Config {
    // The API key stays out of every debug print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("queen_url", &self.queen_url)
            .field("api_key", &self.api_key.value.as_ref().map(|_| "<set>"))
            .field("nats_url", &self.nats_url)
            .field("default_model", &self.default_model)
            .field("data_dir", &self.data_dir)
            .field("nats_identity", &self.nats_identity)
            .finish()
    }
}

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    queen_url: Option<String>,
    api_key: Option<String>,
    nats_url: Option<String>,
    default_model: Option<String>,
    data_dir: Option<PathBuf>,
}

/// Reads an environment variable of this process (empty counts as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Builds the configuration from the flags, the file they or the environment name, and `env`
    /// (a lookup function, so tests need not touch the process environment).
    pub fn load(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let file_path = config_file_path(flags, env)?;
        let file = match &file_path {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let from_file =
            |v: Option<String>| v.map(|v| (v, Source::File(file_path.clone().unwrap_or_default())));

        let pick = |flag: Option<(String, &'static str)>,
                    env_var: &'static str,
                    file_value: Option<String>|
         -> Option<(String, Source)> {
            if let Some((value, name)) = flag {
                return Some((value, Source::Flag(name)));
            }
            if let Some(value) = env(env_var) {
                return Some((value, Source::Env(env_var)));
            }
            from_file(file_value)
        };
        let or_default = |picked: Option<(String, Source)>, default: &str| match picked {
            Some((value, source)) => Setting::new(value, source),
            None => Setting::new(default.to_owned(), Source::Default),
        };
        let optional = |picked: Option<(String, Source)>| match picked {
            Some((value, source)) => Setting::new(Some(value), source),
            None => Setting::new(None, Source::Default),
        };

        let queen_url = or_default(
            pick(flags.queen_url.clone().map(|v| (v, "--queen")), "RBEE_QUEEN_URL", file.queen_url),
            DEFAULT_QUEEN_URL,
        );
        // The operator's tool: an admin key in the environment (a secure cluster's `cli.env` sets both)
        // is the bearer, so that administration works; it is accepted for everything else too.
        let api_key =
            optional(pick(None, "RBEE_ADMIN_KEY", None).or_else(|| pick(None, "RBEE_API_KEY", file.api_key)));
        let nats_url = or_default(
            pick(flags.nats_url.clone().map(|v| (v, "--nats-url")), "RBEE_NATS_URL", file.nats_url),
            DEFAULT_NATS_URL,
        );
        let default_model = or_default(pick(None, "RBEE_DEFAULT_MODEL", file.default_model), DEFAULT_MODEL);
        let data_dir = optional(pick(
            flags.data_dir.clone().map(|p| (p.to_string_lossy().into_owned(), "--data-dir")),
            "RBEE_DATA_DIR",
            file.data_dir.map(|p| p.to_string_lossy().into_owned()),
        ));
        let data_dir = Setting::new(data_dir.value.map(PathBuf::from), data_dir.source);
        let nats_identity = NatsIdentity::from_vars(env)
            .map(|identity| Setting::new(identity, Source::Env("RBEE_NATS_USER")));
        Ok(Self { file: file_path, queen_url, api_key, nats_url, default_model, data_dir, nats_identity })
    }
}

/// `--config`, else `$RBEE_CONFIG` (both must exist), else `~/.config/rbee/config.toml` when present.
fn config_file_path(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = &flags.config {
        if !path.is_file() {
            bail!("config file {} (from --config) does not exist", path.display());
        }
        return Ok(Some(path.clone()));
    }
    if let Some(path) = env("RBEE_CONFIG").map(PathBuf::from) {
        if !path.is_file() {
            bail!("config file {} (from RBEE_CONFIG) does not exist", path.display());
        }
        return Ok(Some(path));
    }
    let config_home = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")));
    Ok(config_home.map(|dir| dir.join("rbee/config.toml")).filter(|path| path.is_file()))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {} is not valid TOML: {}", path.display(), e.message()))?;
    if let Some(unknown) = table.keys().find(|key| !KNOWN_KEYS.contains(&key.as_str())) {
        bail!(
            "config file {}: unknown key `{unknown}` (known keys: {})",
            path.display(),
            KNOWN_KEYS.join(", ")
        );
    }
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.message()))
}

/// `rbee config show`: each setting, its value and its origin; the API key only as set or not set.
pub fn show(config: &Config) -> anyhow::Result<()> {
    let file = match &config.file {
        Some(path) => path.display().to_string(),
        None => "none".to_owned(),
    };
    outln!("{:<14} {}", "config file", file);
    let api_key = if config.api_key.value.is_some() { "<set>" } else { "<not set>" };
    let data_dir = match (&config.data_dir.value, crate::up::root::find_root(&crate::config::process_env)) {
        (Some(dir), _) => (dir.display().to_string(), config.data_dir.source.to_string()),
        (None, Ok(root)) => (
            crate::up::root::default_data_dir(&root).display().to_string(),
            "default: the project root".into(),
        ),
        (None, Err(_)) => ("<project>/.rbee/data".to_owned(), "default".to_owned()),
    };
    let rows = [
        ("queen_url", config.queen_url.value.clone(), config.queen_url.source.to_string()),
        ("api_key", api_key.to_owned(), config.api_key.source.to_string()),
        (
            "nats_url",
            rbee_bus::connect::redact_url(&config.nats_url.value),
            config.nats_url.source.to_string(),
        ),
        ("default_model", config.default_model.value.clone(), config.default_model.source.to_string()),
        ("data_dir", data_dir.0, data_dir.1),
        (
            "nats_user",
            config
                .nats_identity
                .as_ref()
                .map(|i| i.value.user.clone())
                .unwrap_or_else(|| "<none>".to_owned()),
            config
                .nats_identity
                .as_ref()
                .map(|i| i.source.to_string())
                .unwrap_or_else(|| "default".to_owned()),
        ),
    ];
    let width = rows.iter().map(|(_, value, _)| value.len()).max().unwrap_or(0);
    for (name, value, source) in rows {
        outln!("{name:<14} {value:<width$}  ({source})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let config = Config::load(&Flags::default(), &env_of(&[])).expect("loads");
        assert_eq!(config.queen_url.value, DEFAULT_QUEEN_URL);
        assert_eq!(config.queen_url.source, Source::Default);
        assert!(config.api_key.value.is_none());
        assert_eq!(config.default_model.value, DEFAULT_MODEL);
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "queen_url = \"http://file:1\"\nnats_url = \"nats://file:2\"\napi_key = \"k\"\n",
        )
        .expect("write");
        let flags =
            Flags { config: Some(path.clone()), queen_url: Some("http://flag:3".into()), ..Flags::default() };
        let config = Config::load(
            &flags,
            &env_of(&[("RBEE_QUEEN_URL", "http://env:4"), ("RBEE_NATS_URL", "nats://env:5")]),
        )
        .expect("loads");
        assert_eq!(config.queen_url.value, "http://flag:3");
        assert_eq!(config.nats_url.value, "nats://env:5");
        assert_eq!(config.nats_url.source, Source::Env("RBEE_NATS_URL"));
        assert_eq!(config.api_key.source, Source::File(path));
        assert!(!format!("{config:?}").contains("\"k\""));
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "queen_ur = \"x\"\n").expect("write");
        let flags = Flags { config: Some(path), ..Flags::default() };
        let error = Config::load(&flags, &env_of(&[])).expect_err("refused").to_string();
        assert!(error.contains("unknown key `queen_ur`"), "{error}");
    }
}

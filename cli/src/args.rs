//! Every command and flag of `rbee`, as clap derive types. No logic lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Flags;

/// rbee: one OpenAI-style endpoint over the machines you own.
#[derive(Debug, Parser)]
#[command(name = "rbee", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: $RBEE_CONFIG, else ~/.config/rbee/config.toml if present).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The queen's HTTP address, or several comma-separated (a leader and its standbys: each call
    /// goes to whichever answers); overrides queen_url and RBEE_QUEEN_URL.
    #[arg(long = "queen", global = true, value_name = "URL")]
    pub queen: Option<String>,
    /// The NATS server (overrides nats_url and RBEE_NATS_URL). For `rbee up`: use this existing
    /// server instead of starting one.
    #[arg(long, global = true, value_name = "URL")]
    pub nats_url: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The flags that take part in the configuration layering.
    pub fn flags(&self) -> Flags {
        let data_dir = match &self.command {
            Command::Up(up) => up.data_dir.clone(),
            Command::Join(join) => join.data_dir.clone(),
            _ => None,
        };
        Flags {
            config: self.config.clone(),
            queen_url: self.queen.clone(),
            nats_url: self.nats_url.clone(),
            data_dir,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a local cluster: nats-server, queen, hive and one worker; ctrl-c stops it all.
    Up(UpArgs),
    /// Join this machine to a cluster another machine started with `rbee up --host`: a nats-server
    /// that joins the cluster and a hive; ctrl-c stops both.
    Join(JoinArgs),
    /// Run a prompt and stream the answer.
    Infer(InferArgs),
    /// Show hives, devices, workers and recent jobs.
    Status(StatusArgs),
    /// List hives; drain one for maintenance and take it back.
    Hives {
        /// What to do with hives.
        #[command(subcommand)]
        command: HivesCommand,
    },
    /// List, spawn and stop workers.
    Workers {
        /// What to do with workers.
        #[command(subcommand)]
        command: WorkersCommand,
    },
    /// List, import, pull and remove models in a hive's catalog.
    Models {
        /// What to do with models.
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Generate the files of a secure multi-machine cluster.
    Secure {
        /// What to do.
        #[command(subcommand)]
        command: SecureCommand,
    },
    /// List, show, cancel and follow jobs.
    Jobs {
        /// What to do with jobs.
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Print every message on the bus, decoded, one line each.
    Watch(WatchArgs),
    /// Show the configuration.
    Config {
        /// What to show.
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// `rbee up`
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Model to start a worker for (default: default_model, else smollm2-135m-instruct).
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// Start no worker.
    #[arg(long)]
    pub no_worker: bool,
    /// Port of the queen's HTTP API on 127.0.0.1.
    #[arg(long, default_value_t = 7833)]
    pub port: u16,
    /// Where the cluster keeps its state and logs (default: data_dir, else <project>/.rbee/data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Secure mode: TLS to NATS with a generated CA, one NATS identity per process with per-role
    /// permissions, and an HTTP API key (files under <data_dir>/secure).
    #[arg(long)]
    pub secure: bool,
    /// This machine's address on the network the other machines share: NATS takes clients and
    /// cluster routes there, the API listens there as well as on 127.0.0.1, and
    /// <data_dir>/join.toml (with --secure: one <data_dir>/join-<HIVE_ID>.toml per --join) says how
    /// to join.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<std::net::IpAddr>,
    /// With --host --secure: a machine that will join, as HIVE_ID=ADDR (repeatable). It gets a
    /// certificate for ADDR and the identities of hive HIVE_ID in its own join-<HIVE_ID>.toml.
    #[arg(long = "join", value_name = "HIVE_ID=ADDR")]
    pub joiners: Vec<crate::secure::cluster::Joiner>,
    /// Serve the API on Ollama's address too (e.g. 127.0.0.1:11434), for apps that look for Ollama there.
    #[arg(long, value_name = "ADDR")]
    pub ollama_addr: Option<std::net::SocketAddr>,
    /// How long an idle worker stays loaded (this command's worker too): 5m, 30s, 1h, 0, -1 (keep).
    #[arg(long, value_name = "DURATION", default_value = "5m", allow_hyphen_values = true)]
    pub keep_alive: String,
    /// Declare at most this many bytes of memory for this machine's CPU (its workers count against it).
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
}

/// `rbee join`
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The join file `rbee up --host` wrote (<data_dir>/join.toml on the first machine, or
    /// join-<HIVE_ID>.toml in secure mode).
    pub file: PathBuf,
    /// This machine's address on the network the other machines share.
    #[arg(long, value_name = "ADDR")]
    pub host: std::net::IpAddr,
    /// The id of this machine's hive (default: the host name).
    #[arg(long, value_name = "ID")]
    pub hive_id: Option<String>,
    /// Where this machine keeps its catalog and logs (default: data_dir, else <project>/.rbee/data).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Declare at most this many bytes of memory for this machine's CPU (its workers count against it).
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
    /// Also run a standby queen here (its API on 127.0.0.1:7833 and ADDR:7833), and a JetStream node
    /// for the leader lease: with two such machines the lease survives the first machine's loss and
    /// a standby takes over. Plain mode only. (Not `--queen`: that global flag names queens' URLs.)
    #[arg(long)]
    pub standby_queen: bool,
}

/// `rbee secure ...`
#[derive(Debug, Subcommand)]
pub enum SecureCommand {
    /// Write a CA, a server certificate, the nats-server configuration, one identity per process
    /// and an API key, for a cluster of several machines.
    Init {
        /// Where to write the files.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Host name or address clients reach the nats-server at (repeatable; localhost and
        /// 127.0.0.1 are always included).
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// A hive that gets an identity and a worker pool (repeatable).
        #[arg(long = "hive", value_name = "HIVE_ID", required = true)]
        hives: Vec<String>,
        /// Worker identities per hive (the most workers a hive runs at once).
        #[arg(long, default_value_t = crate::secure::DEFAULT_POOL)]
        pool: usize,
        /// The nats-server's listen address.
        #[arg(long, default_value = "0.0.0.0:4222")]
        listen: String,
        /// The nats-server's JetStream store.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/rbee/nats")]
        jetstream_store: PathBuf,
    },
}

/// `rbee infer`
#[derive(Debug, Args)]
pub struct InferArgs {
    /// The prompt.
    pub prompt: String,
    /// Send the prompt as a user chat message (the model's chat template applies).
    #[arg(long)]
    pub chat: bool,
    /// Model id (default: default_model, else smollm2-135m-instruct).
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// Sampling temperature, 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Drop tokens below this fraction of the top probability.
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Penalty for repeated tokens; 1 disables.
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Sampler seed, for reproducible output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Most tokens to generate.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Print one JSON object with the text and the figures instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// `rbee status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object with hives, workers and jobs.
    #[arg(long)]
    pub json: bool,
}

/// `rbee hives ...`
#[derive(Debug, Subcommand)]
pub enum HivesCommand {
    /// List hives with their devices and memory.
    Ls {
        /// Print the queen's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Place nothing new on a hive, let its running jobs finish, then stop its workers.
    Drain {
        /// The hive id.
        hive_id: String,
        /// Seconds running jobs get before the hive's workers are stopped anyway.
        #[arg(long, value_name = "SECONDS")]
        deadline_s: Option<u64>,
        /// Return at once instead of waiting until the hive has no worker left.
        #[arg(long)]
        no_wait: bool,
    },
    /// Take a drained hive back: work is placed there again.
    Undrain {
        /// The hive id.
        hive_id: String,
    },
}

/// `rbee workers ...`
#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List workers.
    Ls {
        /// Print the queen's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a worker for a model.
    Spawn {
        /// The model id.
        model: String,
        /// The hive to start it on (the queen picks when absent).
        #[arg(long)]
        hive: Option<String>,
        /// Device on that hive (`cpu`, `cuda:0`).
        #[arg(long)]
        device: Option<String>,
        /// Concurrent jobs.
        #[arg(long)]
        slots: Option<u32>,
        /// Context tokens per slot.
        #[arg(long)]
        ctx_per_slot: Option<u32>,
        /// Serve the model from this many distinct hives (those already serving it count); the
        /// queen picks them.
        #[arg(long, conflicts_with_all = ["hive", "device"])]
        replicas: Option<u32>,
        /// Return at once instead of waiting until the worker is ready.
        #[arg(long)]
        no_wait: bool,
        /// Unload it after this long idle (5m, 30s, 0); default: it stays until stopped.
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        keep_alive: Option<String>,
    },
    /// Stop a worker.
    Stop {
        /// The worker id.
        worker_id: String,
    },
}

/// `rbee models ...`
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List a hive's models (asks the hive over NATS).
    Ls {
        /// The hive.
        #[arg(long, default_value = "local")]
        hive: String,
        /// Print the hive's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Import a GGUF file that is already on the hive's machine.
    Import {
        /// Path of the file on the hive's machine.
        path: PathBuf,
        /// Model id (the hive derives one from the file name when absent).
        #[arg(long)]
        id: Option<String>,
        /// The hive.
        #[arg(long, default_value = "local")]
        hive: String,
    },
    /// Download a GGUF file into a hive's catalog.
    Pull {
        /// An http(s) URL of a GGUF file, or a hub reference: hf:ORG/REPO/FILE.gguf, hf:ORG/REPO:QUANT
        /// (the GGUF named with that quantization, e.g. Q4_K_M) or hf:ORG/REPO (its only GGUF). The hive
        /// resolves hub references against $HF_ENDPOINT (default https://huggingface.co), with $HF_TOKEN
        /// as a bearer when set.
        url: String,
        /// Model id (the hive derives one from the URL when absent).
        #[arg(long)]
        id: Option<String>,
        /// Expected sha256 of the file, hex.
        #[arg(long)]
        sha256: Option<String>,
        /// The hive.
        #[arg(long, default_value = "local")]
        hive: String,
    },
    /// Remove a model from a hive's catalog.
    Rm {
        /// The model id.
        id: String,
        /// The hive.
        #[arg(long, default_value = "local")]
        hive: String,
    },
}

/// `rbee jobs ...`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List recent jobs.
    Ls {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print the queen's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Show {
        /// The job id.
        job_id: String,
        /// Print the queen's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job.
    Cancel {
        /// The job id.
        job_id: String,
    },
    /// Follow a job's tokens and status until it finishes.
    Tail {
        /// The job id.
        job_id: String,
    },
}

/// `rbee watch`
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// NATS subject to subscribe to (wildcards `*` and `>` allowed).
    #[arg(default_value = rbee_bus::subject::ALL)]
    pub subject: String,
}

/// `rbee config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print each setting, its value and where it came from (the API key is never shown).
    Show,
}

//! Dev-only test support for rbee: a real `nats-server` per test (random port, JetStream in its own temp
//! store, killed and cleaned up on drop), the project's paths (the model and binaries `make setup`
//! installs), a tiny random-weight GGUF writer for fast plumbing tests, and hosts of their own as
//! network namespaces ([`hosts`]) for multi-machine tests.

pub mod gguf;
pub mod hosts;
pub mod logs;
pub mod nats;
pub mod paths;

pub use nats::{NatsCluster, NatsServer};

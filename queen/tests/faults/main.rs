//! Faults injected into a running cluster with the real model: a real nats-server, a real hive (in
//! process or as the `rbee-hive` binary), real `rbee-worker` processes on SmolLM2, and the queen (in
//! process or as the `rbee-queen` binary). Each test says, in a comment and in its assertion messages,
//! what the user sees.
//!
//! They run in `make test` (`make test-faults` runs them alone). The tests take turns (one cluster at a
//! time: two cores), use short heartbeats (250 ms) and small `max_tokens`, and never assert absolute
//! timings: measured times are printed, and waits are generous. A wait on a job that is generating is
//! on its progress, not its total time: it gives up when no event came for [`STALL`](harness::STALL)
//! (a hang), not when a loaded machine decodes slowly.
//! Logs of the in-process parts are captured (and written to `$TMPDIR/rbee-faults-<test>.log`); the
//! binaries log to files in the test's temp dir.
//!
//! One test binary, the tests by theme: [`nats`] (the bus lost or cut), [`processes`] (a worker, the
//! queen, a hive killed), [`input`] (garbage on the bus and over HTTP), [`load`] (more streams than
//! slots); [`harness`] starts the cluster and [`events`] reads the streams.

mod events;
mod harness;
mod input;
mod load;
mod nats;
mod processes;

//! Jobs the queen tracks. Each has one owner, a [`job::Job`] in the [`table::JobTable`]: its pure
//! [`record`], its event buffer, cancel and failure. Events reach it from the bus through the
//! [`relay`] and from the queen's own decisions through [`announce`]. [`admit`] checks and accepts a
//! submission, [`dispatch`] places it step by step (following a placed job with [`watch`], asking
//! hives for workers through [`spawns`]), [`store`] keeps the history in JetStream, [`requests`] the requests of jobs not yet ended (for
//! a takeover), and [`orphans`]
//! fails replayed jobs nobody follows any more.

pub mod admit;
pub mod announce;
pub mod dispatch;
pub mod job;
pub mod orphans;
pub mod record;
pub mod relay;
pub mod requests;
pub mod spawns;
pub mod store;
pub mod table;
pub mod watch;

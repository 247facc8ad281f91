//! Jobs the queen tracks: the pure job registry ([`registry`]), the token path ([`stream`]), placement
//! and retries ([`dispatch`]), and durable history in JetStream ([`store`]).

pub mod dispatch;
pub mod registry;
pub mod store;
pub mod stream;

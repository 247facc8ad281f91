//! Jobs the queen tracks.

pub mod registry;

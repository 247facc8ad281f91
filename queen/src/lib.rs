//! rbee queen
pub mod jobs;
pub mod registry;
pub mod scheduler;

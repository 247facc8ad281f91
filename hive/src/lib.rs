//! x

pub mod catalog;

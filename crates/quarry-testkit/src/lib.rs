//! Deterministic synthetic trades (`quarry gen`) and helpers for tests.

pub mod generate;

pub use generate::{GenOptions, generate};

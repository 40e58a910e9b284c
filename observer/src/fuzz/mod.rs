//! Fuzzing the kernel classifier with generated and mutated frames.
//!
//! [`generate`] builds valid frames (from `headers`), seeded by [`rng`].

pub mod generate;
mod headers;
pub mod rng;

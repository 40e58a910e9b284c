//! Fuzzing the kernel classifier with generated and mutated frames.
//!
//! [`generate`] builds valid frames (from `headers`), [`mutate`] breaks
//! them, [`case`] says which frame number N of a seed is; seeded by [`rng`].

pub mod case;
pub mod generate;
mod headers;
pub mod mutate;
pub mod rng;

#![no_std]
// The programs live in the `observer` binary target (src/main.rs); this
// library exists so that the userspace crate can name this package as a
// build dependency and be rebuilt when it changes.

//! The restorer's ABI, shared between the engine and the no_std blob.
//!
//! The blob itself lives in `blob.rs` and is built by the engine's
//! `build.rs` as a flat position-independent image; this library target
//! only exports the `#[repr(C)]` argument block both sides agree on.
#![no_std]

pub mod abi;

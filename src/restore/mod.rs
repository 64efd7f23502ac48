//! Restoring tasks: the restorer blob loader.

pub mod blob;

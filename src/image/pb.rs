//! Generated protobuf types for every image message (package `cryo.images`).
#![allow(missing_docs, clippy::all)]
include!(concat!(env!("OUT_DIR"), "/cryo.images.rs"));

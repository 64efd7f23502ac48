//! placeholder until the proc module lands

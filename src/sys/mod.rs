//! placeholder until the sys module lands

//! placeholder until the image module lands

//! Test harness for cryo end-to-end tests.

//! Logging: tracing to a CRIU-style log file (`-o FILE`, `-v0`..`-v4`);
//! errors also reach stderr through the CLI.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use tracing::Level;

/// CRIU's verbosity numbers to tracing levels (default 2 = warnings).
pub fn level(v: Option<u8>) -> Level {
    match v.unwrap_or(2) {
        0 | 1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// Installs the global subscriber.
pub fn init(file: Option<&Path>, verbosity: Option<u8>) -> Result<()> {
    let lvl = level(verbosity);
    let builder = tracing_subscriber::fmt()
        .with_max_level(lvl)
        .with_target(false)
        .with_ansi(false);
    match file {
        Some(p) => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(p)
                .with_context(|| format!("Cannot open the log file {}", p.display()))?;
            let w: &'static Gated = Box::leak(Box::new(Gated(Mutex::new(f))));
            let _ = builder.with_writer(w).try_init();
        }
        // Without a log file, messages go to stderr only when asked for
        // with -v: errors reach the user once, through the CLI.
        None if verbosity.is_some() => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
        None => {}
    }
    Ok(())
}

static SILENCED: AtomicBool = AtomicBool::new(false);

/// Stops all logging in this process. Restored tasks call it first: they
/// rearrange their fd table, and the log file's descriptor number may be
/// taken by one of the task's own files.
pub fn silence() {
    SILENCED.store(true, Ordering::SeqCst);
}

/// A log file writer that goes quiet after [`silence`].
struct Gated(Mutex<std::fs::File>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for &'static Gated {
    type Writer = GatedWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        GatedWriter(&(*self).0)
    }
}

struct GatedWriter<'a>(&'a Mutex<std::fs::File>);

impl Write for GatedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if SILENCED.load(Ordering::SeqCst) {
            return Ok(buf.len());
        }
        self.0.lock().map_or(Ok(buf.len()), |mut f| f.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbosity_levels() {
        assert_eq!(level(Some(0)), Level::ERROR);
        assert_eq!(level(None), Level::WARN);
        assert_eq!(level(Some(4)), Level::DEBUG);
    }
}

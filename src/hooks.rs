//! Callbacks from the engine at the points where CRIU runs its action
//! scripts / sends its RPC notifications (calling-conventions.md §2.6).
//!
//! The engine fires the events it alone can place (after the images are
//! written but before the tree is killed; after every restored task is
//! ready but before any of them runs). The events that come first or last
//! (`pre-dump`, `pre-restore`, `post-resume`) are sent by the caller around
//! the engine call. A callback that fails aborts the operation: a dump
//! leaves the tree running, a restore kills what it created.

use std::fmt;
use std::sync::Arc;

use anyhow::Result;

/// An engine event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Dump: every image is written; the tree is still frozen.
    PostDump,
    /// Restore: the namespaces exist (host pid of the restored root).
    SetupNamespaces { pid: i32 },
    /// Restore: the namespaces are set up.
    PostSetupNamespaces,
    /// Restore: every task exists and is ready; none runs yet.
    PostRestore { pid: i32 },
    /// Restore: the tasks are about to be released.
    PreResume,
    /// Restore: the master of a re-created pty whose master was outside
    /// the tree (a container's console); the engine keeps the fd open for
    /// the call.
    OrphanPtsMaster { fd: i32 },
    /// Restore (`RestoreOpts::run_hook` only): process `pid` (host pid) is
    /// in its dumped state, stopped by this thread with ptrace, before it
    /// runs any of its own code.
    Resumable { pid: i32 },
    /// Restore (`RestoreOpts::run_hook` only): every process is Resumable;
    /// they run when the callback returns.
    ReadyToRun,
}

impl Event {
    /// CRIU's name of the event (the `script` of a notification).
    pub fn script(&self) -> &'static str {
        match self {
            Event::PostDump => "post-dump",
            Event::SetupNamespaces { .. } => "setup-namespaces",
            Event::PostSetupNamespaces => "post-setup-namespaces",
            Event::PostRestore { .. } => "post-restore",
            Event::PreResume => "pre-resume",
            Event::OrphanPtsMaster { .. } => "orphan-pts-master",
            Event::Resumable { .. } => "cryo-resumable",
            Event::ReadyToRun => "cryo-ready-to-run",
        }
    }

    /// The pid CRIU attaches to the event, if any.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Event::SetupNamespaces { pid } | Event::PostRestore { pid } | Event::Resumable { pid } => Some(*pid),
            _ => None,
        }
    }
}

type Callback = dyn Fn(Event) -> Result<()> + Send + Sync;

/// An optional event callback; the default does nothing.
#[derive(Clone, Default)]
pub struct Hook(Option<Arc<Callback>>);

impl Hook {
    /// A hook calling `f` for every event.
    pub fn new(f: impl Fn(Event) -> Result<()> + Send + Sync + 'static) -> Hook {
        Hook(Some(Arc::new(f)))
    }

    /// Fires `ev`; Ok when there is no callback.
    pub fn fire(&self, ev: Event) -> Result<()> {
        match &self.0 {
            Some(f) => f(ev),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Hook(set)" } else { "Hook(none)" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn default_hook_is_silent_and_set_hook_sees_events() {
        assert!(Hook::default().fire(Event::PostDump).is_ok());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let h = Hook::new(move |e| {
            s2.lock().unwrap().push(e);
            if e == Event::PreResume {
                anyhow::bail!("no");
            }
            Ok(())
        });
        h.fire(Event::PostRestore { pid: 7 }).unwrap();
        assert!(h.fire(Event::PreResume).is_err());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Event::PostRestore { pid: 7 }, Event::PreResume]
        );
        assert_eq!(Event::PostRestore { pid: 7 }.pid(), Some(7));
        assert_eq!(Event::PostDump.script(), "post-dump");
    }
}

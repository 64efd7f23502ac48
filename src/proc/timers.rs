//! `/proc/PID/timers`: the POSIX timers of a process (ids, signal,
//! notification, clock). Their current values need timer_gettime inside
//! the task.

use super::ParseError;

/// One timer as listed by /proc.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub signo: i32,
    /// sigev_value (sival_ptr) as the kernel shows it.
    pub sival: u64,
    /// SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4.
    pub notify: i32,
    /// Target pid or tid of the notification.
    pub notify_id: i32,
    pub clock: i32,
}

fn err(line: usize, what: &str) -> ParseError {
    ParseError {
        file: "timers".into(),
        line,
        what: what.into(),
    }
}

/// Parses the text of /proc/PID/timers.
pub fn parse(text: &str) -> Result<Vec<PosixTimer>, ParseError> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some((k, v)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(err(n, "no colon"));
        };
        let v = v.trim();
        match k {
            "ID" => out.push(PosixTimer {
                id: v.parse().map_err(|_| err(n, "bad ID"))?,
                ..Default::default()
            }),
            "signal" => {
                let t = out.last_mut().ok_or_else(|| err(n, "signal before ID"))?;
                let (sig, val) = v.split_once('/').ok_or_else(|| err(n, "bad signal"))?;
                t.signo = sig.parse().map_err(|_| err(n, "bad signal number"))?;
                t.sival = u64::from_str_radix(val, 16).map_err(|_| err(n, "bad sigev value"))?;
            }
            "notify" => {
                let t = out.last_mut().ok_or_else(|| err(n, "notify before ID"))?;
                let (how, who) = v.split_once('/').ok_or_else(|| err(n, "bad notify"))?;
                let (kind, id) = who.split_once('.').ok_or_else(|| err(n, "bad notify target"))?;
                let base = match how {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    "thread" => libc::SIGEV_THREAD,
                    _ => return Err(err(n, "unknown notify kind")),
                };
                t.notify = base | if kind == "tid" { libc::SIGEV_THREAD_ID } else { 0 };
                t.notify_id = id.parse().map_err(|_| err(n, "bad notify id"))?;
            }
            "ClockID" => {
                let t = out.last_mut().ok_or_else(|| err(n, "ClockID before ID"))?;
                t.clock = v.parse().map_err(|_| err(n, "bad ClockID"))?;
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_timers() {
        let t = "ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.1234\nClockID: 1\n\
                 ID: 3\nsignal: 34/00007f00deadbeef\nnotify: signal/tid.1240\nClockID: 0\n";
        let v = parse(t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            PosixTimer {
                id: 0,
                signo: 14,
                sival: 0,
                notify: libc::SIGEV_SIGNAL,
                notify_id: 1234,
                clock: 1
            }
        );
        assert_eq!(v[1].sival, 0x7f00_dead_beef);
        assert_eq!(v[1].notify, libc::SIGEV_THREAD_ID);
        assert!(parse("signal: 1/0\n").is_err());
        assert!(parse("").unwrap().is_empty());
    }
}

//! Timers that count wall-clock time keep their deadlines across a dump
//! and restore: the time between reading them at dump and arming them at
//! restore is taken off their remaining time (a timer that would have
//! expired meanwhile fires at once). Timers of CPU-time clocks and the
//! virtual/profiling itimers stand still while the tree is frozen, as the
//! kernel's own clocks do, and are armed with what they had left.

/// CLOCK_REALTIME now, in ns since the epoch.
pub(crate) fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Whether a POSIX timer on `clock_id` counts wall-clock time (REALTIME,
/// MONOTONIC, BOOTTIME, their ALARM variants, TAI), not CPU time.
pub(crate) fn is_wall_clock(clock_id: u32) -> bool {
    matches!(clock_id, 0 | 1 | 7 | 8 | 9 | 11)
}

/// The remaining time (sec, sub-second part in `unit` ns) of an armed
/// timer after `elapsed_ns` more nanoseconds: at least one unit, so that an
/// armed timer stays armed (and fires at once). A disarmed timer (0, 0)
/// stays disarmed.
pub(crate) fn shift(sec: u64, sub: u64, unit: u64, elapsed_ns: u64) -> (u64, u64) {
    if sec == 0 && sub == 0 {
        return (0, 0);
    }
    let left = (sec as u128 * 1_000_000_000 + sub as u128 * unit as u128).saturating_sub(elapsed_ns as u128);
    let left = left.max(unit as u128);
    (
        (left / 1_000_000_000) as u64,
        ((left % 1_000_000_000) / unit as u128) as u64,
    )
}

/// Nanoseconds since `read_at_ns` (0 when unknown, or if the clock went
/// back).
pub(crate) fn elapsed_since(read_at_ns: Option<u64>) -> u64 {
    match read_at_ns {
        Some(t) if t > 0 => realtime_ns().saturating_sub(t),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_remaining_time() {
        // 5.5 s left in ns units, 2 s later: 3.5 s.
        assert_eq!(shift(5, 500_000_000, 1, 2_000_000_000), (3, 500_000_000));
        // in µs units (itimers).
        assert_eq!(shift(5, 500_000, 1000, 2_000_000_000), (3, 500_000));
        // expired meanwhile: one unit left.
        assert_eq!(shift(1, 0, 1, 3_000_000_000), (0, 1));
        assert_eq!(shift(1, 0, 1000, 3_000_000_000), (0, 1));
        // disarmed stays disarmed.
        assert_eq!(shift(0, 0, 1, 5), (0, 0));
        // nothing elapsed.
        assert_eq!(shift(7, 3, 1, 0), (7, 3));
    }

    #[test]
    fn wall_clocks() {
        assert!(is_wall_clock(libc::CLOCK_REALTIME as u32));
        assert!(is_wall_clock(libc::CLOCK_MONOTONIC as u32));
        assert!(is_wall_clock(libc::CLOCK_BOOTTIME as u32));
        assert!(!is_wall_clock(libc::CLOCK_PROCESS_CPUTIME_ID as u32));
        assert!(!is_wall_clock(libc::CLOCK_THREAD_CPUTIME_ID as u32));
        // A CPU-clock id of another process (negative, as u32).
        assert!(!is_wall_clock((-6i32) as u32));
    }
}

//! `/proc/P/stat` (and `/proc/P/task/T/stat`).
//!
//! One line: `pid (comm) state ppid ...` (proc(5) numbers the fields from
//! 1). `comm` may contain spaces and parentheses, so it runs from the first
//! `(` to the *last* `)`; the remaining fields are split on blanks.

use super::{dec, read_parsed, ParseError, Result};

/// The fields of `/proc/P/stat` cryo uses. Fields the kernel hides from
/// non-ptrace-capable readers (addresses) show up as 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    /// (1)
    pub pid: u32,
    /// (2) without the parentheses.
    pub comm: String,
    /// (3) R S D Z T t X I ...
    pub state: char,
    /// (4)
    pub ppid: u32,
    /// (5)
    pub pgrp: u32,
    /// (6)
    pub session: u32,
    /// (7)
    pub tty_nr: u32,
    /// (8) -1 without a controlling terminal.
    pub tpgid: i32,
    /// (9) PF_* flags.
    pub flags: u32,
    /// (14), in clock ticks.
    pub utime: u64,
    /// (15)
    pub stime: u64,
    /// (18)
    pub priority: i64,
    /// (19)
    pub nice: i64,
    /// (20)
    pub num_threads: u32,
    /// (22), in clock ticks after boot.
    pub starttime: u64,
    /// (23) bytes.
    pub vsize: u64,
    /// (24) pages.
    pub rss: u64,
    /// (26)
    pub start_code: u64,
    /// (27)
    pub end_code: u64,
    /// (28)
    pub start_stack: u64,
    /// (38) the signal sent to the parent on exit.
    pub exit_signal: i32,
    /// (39)
    pub processor: u32,
    /// (40)
    pub rt_priority: u32,
    /// (41) SCHED_* policy.
    pub policy: u32,
    /// (45)
    pub start_data: u64,
    /// (46)
    pub end_data: u64,
    /// (47)
    pub start_brk: u64,
    /// (48)
    pub arg_start: u64,
    /// (49)
    pub arg_end: u64,
    /// (50)
    pub env_start: u64,
    /// (51)
    pub env_end: u64,
    /// (52) the wait status as waitpid would report it.
    pub exit_code: i32,
}

/// Number of fields after comm that the parser requires: up to (52).
const FIELDS_AFTER_COMM: usize = 52 - 2;

/// Parses the text of `/proc/P/stat`.
pub fn parse(text: &str) -> std::result::Result<Stat, ParseError> {
    const F: &str = "stat";
    let text = text.trim_end_matches('\n');
    let open = text
        .find('(')
        .ok_or_else(|| ParseError::new(F, 1, "no '(' before comm"))?;
    let close = text
        .rfind(')')
        .filter(|&c| c > open)
        .ok_or_else(|| ParseError::new(F, 1, "no ')' after comm"))?;
    let pid = dec(F, 1, text[..open].trim())?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    if rest.len() < FIELDS_AFTER_COMM {
        return Err(ParseError::new(
            F,
            1,
            format!("{} fields after comm, need {FIELDS_AFTER_COMM}", rest.len()),
        ));
    }
    // Field n (1-based, n >= 3) is rest[n - 3].
    let field = |n: usize| rest[n - 3];
    let state_str = field(3);
    let mut chars = state_str.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => return Err(ParseError::new(F, 1, format!("bad state {state_str:?}"))),
    };
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: dec(F, 1, field(4))?,
        pgrp: dec(F, 1, field(5))?,
        session: dec(F, 1, field(6))?,
        tty_nr: dec(F, 1, field(7))?,
        tpgid: dec(F, 1, field(8))?,
        flags: dec(F, 1, field(9))?,
        utime: dec(F, 1, field(14))?,
        stime: dec(F, 1, field(15))?,
        priority: dec(F, 1, field(18))?,
        nice: dec(F, 1, field(19))?,
        num_threads: dec(F, 1, field(20))?,
        starttime: dec(F, 1, field(22))?,
        vsize: dec(F, 1, field(23))?,
        rss: dec(F, 1, field(24))?,
        start_code: dec(F, 1, field(26))?,
        end_code: dec(F, 1, field(27))?,
        start_stack: dec(F, 1, field(28))?,
        exit_signal: dec(F, 1, field(38))?,
        processor: dec(F, 1, field(39))?,
        rt_priority: dec(F, 1, field(40))?,
        policy: dec(F, 1, field(41))?,
        start_data: dec(F, 1, field(45))?,
        end_data: dec(F, 1, field(46))?,
        start_brk: dec(F, 1, field(47))?,
        arg_start: dec(F, 1, field(48))?,
        arg_end: dec(F, 1, field(49))?,
        env_start: dec(F, 1, field(50))?,
        env_end: dec(F, 1, field(51))?,
        exit_code: dec(F, 1, field(52))?,
    })
}

/// Reads `/proc/P/stat`.
pub fn read(pid: u32) -> Result<Stat> {
    read_parsed(super::pid_dir(pid).join("stat"), parse)
}

/// Reads `/proc/P/task/T/stat` (per-thread state and comm).
pub fn read_task(pid: u32, tid: u32) -> Result<Stat> {
    read_parsed(super::task_dir(pid, tid).join("stat"), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAT: &str = "7831 (cat) R 7827 7827 4351 0 -1 4194304 94 0 0 0 0 0 0 0 20 0 1 0 54257 3133440 382 18446744073709551615 94705068204032 94705068223913 140721045477232 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94705068239920 94705068241536 94705138081792 140721045478112 140721045478132 140721045478132 140721045479403 0\n";

    #[test]
    fn plain() {
        let s = parse(CAT).unwrap();
        assert_eq!(s.pid, 7831);
        assert_eq!(s.comm, "cat");
        assert_eq!(s.state, 'R');
        assert_eq!((s.ppid, s.pgrp, s.session), (7827, 7827, 4351));
        assert_eq!((s.tty_nr, s.tpgid), (0, -1));
        assert_eq!(s.flags, 4194304);
        assert_eq!((s.priority, s.nice, s.num_threads), (20, 0, 1));
        assert_eq!(s.starttime, 54257);
        assert_eq!(s.start_code, 94705068204032);
        assert_eq!(s.end_code, 94705068223913);
        assert_eq!(s.start_stack, 140721045477232);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.processor, 1);
        assert_eq!(s.start_data, 94705068239920);
        assert_eq!(s.end_data, 94705068241536);
        assert_eq!(s.start_brk, 94705138081792);
        assert_eq!((s.arg_start, s.arg_end), (140721045478112, 140721045478132));
        assert_eq!((s.env_start, s.env_end), (140721045478132, 140721045479403));
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn comm_with_parens_and_spaces() {
        let line = CAT.replacen("(cat)", "(a) (b c) )", 1);
        let s = parse(&line).unwrap();
        assert_eq!(s.comm, "a) (b c) ");
        assert_eq!(s.ppid, 7827);
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn zombie_exit_code() {
        let z = "7978 (sleep) Z 7976 7973 4351 0 -1 4227084 98 0 0 0 0 0 0 0 20 0 1 0 55317 0 0 18446744073709551615 0 0 0 0 0 0 0 6 0 1 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 256";
        let s = parse(z).unwrap();
        assert_eq!(s.state, 'Z');
        assert_eq!(s.exit_code, 256);
        assert_eq!(s.start_code, 0);
    }

    #[test]
    fn errors() {
        assert!(parse("12 cat R 1").is_err());
        assert!(parse("12 (cat) R 1 2 3").is_err());
        assert!(parse(&CAT.replacen(" R ", " RR ", 1)).is_err());
        assert!(parse(&CAT.replacen(" 7827 ", " x ", 1)).is_err());
    }

    #[test]
    fn live_self() {
        let me = std::process::id();
        let s = read(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(s.num_threads >= 1);
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        let t = read_task(me, me).unwrap();
        assert_eq!(t.pid, me);
    }
}

//! shapes: process trees of many shapes keep their shape, ids, zombies,
//! stopped members and parent-related behaviour.
//!
//! `shapes --log F --shape SHAPE [--corrupt]`
//!
//! Every member (see `cryo_integration::member`) knows the pid, parent,
//! process group and session it must have, idles until SIGUSR2, checks
//! them, reaps its own children and writes `MEMBER <name> PASS|FAIL`. On
//! SIGUSR1 the root wakes the members, reaps its children (and adopted
//! orphans) and writes PASS only if every member passed and the
//! shape-specific checks below hold. Shapes:
//! - `deep`: a chain root > c1 > c2 > c3 > c4 and a sibling s1.
//! - `orphan`: the root is a child subreaper; a > o1, a > o2 > o2g; a is
//!   killed before READY, so o1 and o2 are the root's children (orphans
//!   re-parented to the tree's init) and must still be after restore.
//! - `zombie`: z1 exited 42 and z2 was killed by SIGTERM, neither reaped by
//!   the root; m has an unreaped child z3 that exited 3. After the trigger
//!   waitid(WNOWAIT) must show them as CLD_EXITED 42 / CLD_KILLED 15 and
//!   waitpid must collect those statuses (m does the same for z3). Writes
//!   `ZOMBIES <z1> <z2> <z3>`.
//! - `stopped`: member s is stopped with SIGSTOP (`STOPPED <s>`). The test
//!   checks that s is in state T, sends it SIGCONT, then SIGUSR1 to the
//!   root; the root must see CLD_CONTINUED for s (waitid WCONTINUED|WNOWAIT)
//!   and s must have run its SIGCONT handler.
//! - `sessions`: A leads group A (A1 in it); B leads session B (B1 in group
//!   B, B2 leads group B2 in session B); G leads group G and C1, a child of
//!   C, is in group G; E is in group D whose leader D was killed; F1 is in
//!   session and group F whose leader F was killed (F1 is the root's child
//!   then). The root is a child subreaper. Every id is checked by each
//!   member and by the root from outside (getpgid/getsid/kill(-pgid, 0)).
//! - `pdeathsig`: a > P, where P has PR_SET_PDEATHSIG SIGHUP; after the
//!   trigger a exits and P must receive SIGHUP (and still report SIGHUP as
//!   its pdeathsig), then is reaped by the root (a subreaper).
//! - `subreaper`: the root is a child subreaper with a > B. After the
//!   trigger a exits; B must then be the root's child (getppid, waitpid).
//!
//! - `leftsession`: A forks A1 and then calls setsid(): A1 is in the
//!   root's session, its parent in its own (the dump must refuse this).
//!
//! `--corrupt`: deep/orphan/sessions: a member changes its process group;
//! zombie: z1 is reaped early; stopped: the CLD_CONTINUED report is
//! consumed early; pdeathsig: P never sets its pdeathsig; subreaper: the
//! root stops being a subreaper.

use cryo_integration::member::{self, Want};
use cryo_integration::probe::{self, SetupPipe, SigInfo};
use cryo_integration::wl::{self, Args, Log};

const CLD_EXITED: i32 = 1;
const CLD_KILLED: i32 = 2;
const CLD_CONTINUED: i32 = 6;

struct Ctx {
    log: &'static Log,
    log_path: String,
    pipe: SetupPipe,
    root: i32,
    corrupt: bool,
}

fn spawn(f: impl FnOnce() -> i32) -> i32 {
    let pid = probe::fork();
    if pid == 0 {
        let c = f();
        probe::exit_now(c);
    }
    pid
}

fn setpgid(pid: i32, pgid: i32) -> i32 {
    // SAFETY: integers only.
    unsafe { libc::setpgid(pid, pgid) }
}

fn no_extra() -> Vec<String> {
    Vec::new()
}

impl Ctx {
    /// In a member: report `tag` and close the setup pipe.
    fn ready(&self, tag: i32) {
        self.pipe.send(tag, wl::getpid());
        self.pipe.close_w();
    }

    /// A member with no children of its own and no extra checks.
    fn leaf(&self, want: Want, tag: i32, corrupt: bool) -> i32 {
        self.ready(tag);
        member::live(self.log, &want, libc::SIGUSR2, &[], &no_extra, corrupt)
    }

    /// Idles until killed (a member that is made to exit before READY).
    fn doomed(&self, tag: i32) -> i32 {
        self.ready(tag);
        loop {
            // SAFETY: pause has no arguments.
            unsafe { libc::pause() };
        }
    }
}

/// waitid(P_PID, pid, flags | WNOHANG): the report, if there is one.
fn waitid(pid: i32, flags: i32) -> Option<SigInfo> {
    let mut info = SigInfo::zeroed();
    // SAFETY: `info` is 128 bytes, the size of siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info as *mut SigInfo as *mut libc::siginfo_t,
            flags | libc::WNOHANG,
        )
    };
    (r == 0 && info.pid() != 0).then_some(info)
}

/// Blocks until `pid` (a child) is a zombie, without reaping it.
fn wait_zombie(pid: i32) {
    let end = probe::mono_ns() + 10_000_000_000;
    while waitid(pid, libc::WEXITED | libc::WNOWAIT).is_none() {
        if probe::mono_ns() > end {
            wl::die(&format!("{pid} did not exit"));
        }
        wl::sleep_ms(2);
    }
}

/// Reads the tags reported by `n` members: tag -> pid.
fn collect(ctx: &Ctx, n: usize) -> std::collections::BTreeMap<i32, i32> {
    ctx.pipe.close_w();
    let r = ctx.pipe.recv(n);
    ctx.pipe.close_r();
    r.into_iter().collect()
}

fn kill_and_reap(pid: i32) {
    let _ = probe::kill(pid, libc::SIGTERM);
    if probe::wait_child(pid, 5000).is_err() {
        wl::die(&format!("{pid} did not die of SIGTERM"));
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn wake(pids: &[i32]) {
    for &p in pids {
        let _ = probe::kill(p, libc::SIGUSR2);
    }
}

fn finish(ctx: &Ctx, mut problems: Vec<String>, reap: &[(&str, i32)], all: &[String], details: &str) -> ! {
    let reap: Vec<(String, i32)> = reap.iter().map(|(n, p)| (n.to_string(), *p)).collect();
    problems.extend(member::reap_all(&reap, 10_000));
    problems.extend(member::member_verdicts(&ctx.log_path, all));
    ctx.log.verdict(&problems, details);
}

fn wait_trigger() {
    while !wl::usr1_seen() {
        wl::sleep_ms(10);
    }
}

fn deep(ctx: &'static Ctx) -> ! {
    fn chain(ctx: &'static Ctx, d: i32) -> i32 {
        ctx.pipe.close_r();
        let want = Want::me(&format!("c{d}"));
        let kid = if d < 4 { spawn(move || chain(ctx, d + 1)) } else { 0 };
        ctx.ready(d);
        let kids: Vec<i32> = if kid > 0 { vec![kid] } else { vec![] };
        member::live(ctx.log, &want, libc::SIGUSR2, &kids, &no_extra, ctx.corrupt && d == 4)
    }
    let c1 = spawn(move || chain(ctx, 1));
    let s1 = spawn(move || {
        ctx.pipe.close_r();
        ctx.leaf(Want::me("s1"), 10, false)
    });
    let m = collect(ctx, 5);
    let list: Vec<String> = m.iter().map(|(t, p)| format!("{t}:{p}")).collect();
    ctx.log.line(&format!("DEEP {}", list.join(" ")));
    ctx.log.ready();
    wait_trigger();
    wake(&m.values().copied().collect::<Vec<_>>());
    finish(
        ctx,
        vec![],
        &[("c1", c1), ("s1", s1)],
        &names(&["c1", "c2", "c3", "c4", "s1"]),
        "shape=deep",
    );
}

fn orphan(ctx: &'static Ctx) -> ! {
    let root = ctx.root;
    let a = spawn(move || {
        ctx.pipe.close_r();
        spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("o1").with_ppid(root), 2, false)
        });
        spawn(move || {
            ctx.pipe.close_r();
            let g = spawn(move || {
                ctx.pipe.close_r();
                ctx.leaf(Want::me("o2g"), 4, ctx.corrupt)
            });
            let want = Want::me("o2").with_ppid(root);
            ctx.ready(3);
            member::live(ctx.log, &want, libc::SIGUSR2, &[g], &no_extra, false)
        });
        ctx.doomed(1)
    });
    let m = collect(ctx, 4);
    kill_and_reap(a);
    let (o1, o2, o2g) = (m[&2], m[&3], m[&4]);
    for o in [o1, o2] {
        if cryo_integration::ppid_of(o) != Some(root) {
            wl::die(&format!("orphan {o} was not re-parented to the root"));
        }
    }
    ctx.log
        .line(&format!("ORPHANS o1={o1} o2={o2} o2g={o2g} (their parent {a} is gone)"));
    ctx.log.ready();
    wait_trigger();
    wake(&[o1, o2, o2g]);
    finish(
        ctx,
        vec![],
        &[("o1", o1), ("o2", o2)],
        &names(&["o1", "o2", "o2g"]),
        "shape=orphan",
    );
}

fn zombie(ctx: &'static Ctx) -> ! {
    let z1 = spawn(|| 42);
    let z2 = spawn(|| {
        probe::set_action(libc::SIGTERM, libc::SIG_DFL, 0, &[]);
        let _ = probe::kill(wl::getpid(), libc::SIGTERM);
        1
    });
    let m = spawn(move || {
        ctx.pipe.close_r();
        let z3 = spawn(|| 3);
        wait_zombie(z3);
        ctx.pipe.send(2, z3);
        let want = Want::me("m");
        ctx.ready(1);
        let extra = move || {
            let mut p = Vec::new();
            match waitid(z3, libc::WEXITED | libc::WNOWAIT) {
                Some(i) if i.code() == CLD_EXITED && i.status() == 3 => {}
                Some(i) => p.push(format!(
                    "zombie z3 ({z3}) reports code {} status {}",
                    i.code(),
                    i.status()
                )),
                None => p.push(format!("z3 ({z3}) is not a zombie child")),
            }
            match probe::waitpid(z3, libc::WNOHANG) {
                Ok((r, st)) if r == z3 && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 3 => {}
                other => p.push(format!("waitpid(z3 {z3}): {other:?}")),
            }
            p
        };
        member::live(ctx.log, &want, libc::SIGUSR2, &[], &extra, false)
    });
    let tags = collect(ctx, 2);
    wait_zombie(z1);
    wait_zombie(z2);
    let z3 = tags[&2];
    ctx.log.line(&format!("ZOMBIES {z1} {z2} {z3}"));
    ctx.log.ready();
    if ctx.corrupt {
        let _ = probe::waitpid(z1, 0);
    }
    wait_trigger();
    let mut p = Vec::new();
    for (name, z, code, status) in [("z1", z1, CLD_EXITED, 42), ("z2", z2, CLD_KILLED, libc::SIGTERM)] {
        match waitid(z, libc::WEXITED | libc::WNOWAIT) {
            Some(i) if i.code() == code && i.status() == status => {}
            Some(i) => p.push(format!(
                "zombie {name} ({z}): code {} status {}, expected {code}/{status}",
                i.code(),
                i.status()
            )),
            None => p.push(format!("{name} ({z}) is not a zombie child any more")),
        }
        match probe::waitpid(z, libc::WNOHANG) {
            Ok((r, st)) if r == z => {
                let ok = if code == CLD_EXITED {
                    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == status
                } else {
                    libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == status
                };
                if !ok {
                    p.push(format!("waitpid({name} {z}) collected {}", probe::describe_status(st)));
                }
            }
            other => p.push(format!("waitpid({name} {z}): {other:?}")),
        }
    }
    wake(&[m]);
    finish(
        ctx,
        p,
        &[("m", m)],
        &names(&["m"]),
        &format!("shape=zombie zombies={z1},{z2},{z3}"),
    );
}

fn stopped(ctx: &'static Ctx) -> ! {
    let s = spawn(move || {
        ctx.pipe.close_r();
        probe::install_flag(libc::SIGCONT, libc::SA_RESTART);
        let want = Want::me("s");
        ctx.ready(1);
        let extra = || {
            if probe::flag(libc::SIGCONT) {
                vec![]
            } else {
                vec!["its SIGCONT handler never ran".to_string()]
            }
        };
        member::live(ctx.log, &want, libc::SIGUSR2, &[], &extra, false)
    });
    collect(ctx, 1);
    let _ = probe::kill(s, libc::SIGSTOP);
    match probe::waitpid(s, libc::WUNTRACED) {
        Ok((_, st)) if libc::WIFSTOPPED(st) => {}
        other => wl::die(&format!("{s} did not stop: {other:?}")),
    }
    ctx.log.line(&format!("STOPPED {s}"));
    ctx.log.ready();
    wait_trigger();
    if ctx.corrupt {
        let _ = waitid(s, libc::WCONTINUED);
    }
    let mut p = Vec::new();
    match waitid(s, libc::WCONTINUED | libc::WNOWAIT) {
        Some(i) if i.code() == CLD_CONTINUED => {}
        Some(i) => p.push(format!("s ({s}): waitid(WCONTINUED) reports code {}", i.code())),
        None => {
            p.push(format!(
                "s ({s}) has no CLD_CONTINUED report: it was not stopped when it got SIGCONT"
            ));
            let _ = probe::kill(s, libc::SIGCONT);
        }
    }
    wake(&[s]);
    finish(ctx, p, &[("s", s)], &names(&["s"]), "shape=stopped");
}

fn sessions(ctx: &'static Ctx) -> ! {
    let root = ctx.root;
    let a = spawn(move || {
        ctx.pipe.close_r();
        setpgid(0, 0);
        let a1 = spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("A1"), 2, false)
        });
        let want = Want::me("A");
        ctx.ready(1);
        member::live(ctx.log, &want, libc::SIGUSR2, &[a1], &no_extra, false)
    });
    setpgid(a, a);
    let b = spawn(move || {
        ctx.pipe.close_r();
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            wl::die("setsid B");
        }
        let b1 = spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("B1"), 4, false)
        });
        let b2 = spawn(move || {
            ctx.pipe.close_r();
            setpgid(0, 0);
            ctx.leaf(Want::me("B2"), 5, false)
        });
        setpgid(b2, b2);
        let want = Want::me("B");
        ctx.ready(3);
        member::live(ctx.log, &want, libc::SIGUSR2, &[b1, b2], &no_extra, false)
    });
    let g = spawn(move || {
        ctx.pipe.close_r();
        setpgid(0, 0);
        ctx.leaf(Want::me("G"), 6, false)
    });
    setpgid(g, g);
    let c = spawn(move || {
        ctx.pipe.close_r();
        let c1 = spawn(move || {
            ctx.pipe.close_r();
            if setpgid(0, g) != 0 {
                wl::die("C1: setpgid(0, G)");
            }
            ctx.leaf(Want::me("C1"), 8, false)
        });
        let want = Want::me("C");
        ctx.ready(7);
        member::live(ctx.log, &want, libc::SIGUSR2, &[c1], &no_extra, false)
    });
    let d = spawn(move || {
        ctx.pipe.close_r();
        setpgid(0, 0);
        ctx.doomed(9)
    });
    setpgid(d, d);
    let e = spawn(move || {
        ctx.pipe.close_r();
        setpgid(0, d);
        ctx.leaf(Want::me("E"), 10, ctx.corrupt)
    });
    setpgid(e, d);
    let f = spawn(move || {
        ctx.pipe.close_r();
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            wl::die("setsid F");
        }
        spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("F1").with_ppid(root), 12, false)
        });
        ctx.doomed(11)
    });
    let m = collect(ctx, 12);
    kill_and_reap(d);
    kill_and_reap(f);
    let f1 = m[&12];
    let b2 = m[&5];
    let outside = move || {
        let mut p = Vec::new();
        // SAFETY: getpgid/getsid take integers only.
        let (pe, sf1, pf1) = unsafe { (libc::getpgid(e), libc::getsid(f1), libc::getpgid(f1)) };
        if pe != d {
            p.push(format!("getpgid(E {e}) is {pe}, expected the leaderless group {d}"));
        }
        if (sf1, pf1) != (f, f) {
            p.push(format!("F1 {f1}: (sid, pgid) ({sf1}, {pf1}), expected ({f}, {f})"));
        }
        for grp in [a, b, g, d, f, b2] {
            if probe::kill(-grp, 0).is_err() {
                p.push(format!("process group {grp} does not exist"));
            }
        }
        p
    };
    let before = outside();
    if !before.is_empty() {
        wl::die(&format!("setup: {before:?}"));
    }
    let list: Vec<String> = m.iter().map(|(t, p)| format!("{t}:{p}")).collect();
    ctx.log.line(&format!("SESSIONS {} D={d} F={f}", list.join(" ")));
    ctx.log.ready();
    wait_trigger();
    let p = outside();
    wake(&[a, m[&2], b, m[&4], m[&5], g, c, m[&8], e, f1]);
    finish(
        ctx,
        p,
        &[("A", a), ("B", b), ("G", g), ("C", c), ("E", e), ("F1", f1)],
        &names(&["A", "A1", "B", "B1", "B2", "G", "C", "C1", "E", "F1"]),
        "shape=sessions",
    );
}

fn pdeathsig(ctx: &'static Ctx) -> ! {
    let root = ctx.root;
    let a = spawn(move || {
        ctx.pipe.close_r();
        spawn(move || {
            ctx.pipe.close_r();
            probe::install_flag(libc::SIGHUP, 0);
            if !ctx.corrupt && probe::prctl(libc::PR_SET_PDEATHSIG, libc::SIGHUP as u64, 0, 0, 0).is_err() {
                wl::die("PR_SET_PDEATHSIG");
            }
            let want = Want::me("P").with_ppid(root);
            ctx.ready(2);
            let extra = || match probe::prctl_get_int(libc::PR_GET_PDEATHSIG) {
                Ok(s) if s == libc::SIGHUP => vec![],
                other => vec![format!("PR_GET_PDEATHSIG is {other:?}")],
            };
            member::live(ctx.log, &want, libc::SIGHUP, &[], &extra, false)
        });
        let want = Want::me("a");
        ctx.ready(1);
        member::live(ctx.log, &want, libc::SIGUSR2, &[], &no_extra, false)
    });
    let m = collect(ctx, 2);
    let pp = m[&2];
    ctx.log.line(&format!("PDEATHSIG a={a} P={pp}"));
    ctx.log.ready();
    wait_trigger();
    wake(&[a]);
    let mut p = member::reap_all(&[("a".to_string(), a)], 10_000);
    match probe::wait_child(pp, 5000) {
        Ok(st) if probe::exited_ok(st) => {}
        Ok(st) => p.push(format!("P ({pp}) ended with {}", probe::describe_status(st))),
        Err(e) => {
            p.push(format!(
                "P ({pp}) did not get its parent-death signal SIGHUP after a exited ({e})"
            ));
            let _ = probe::kill(pp, libc::SIGKILL);
            let _ = probe::waitpid(pp, 0);
        }
    }
    finish(ctx, p, &[], &names(&["a", "P"]), "shape=pdeathsig");
}

fn subreaper(ctx: &'static Ctx) -> ! {
    let root = ctx.root;
    let a = spawn(move || {
        ctx.pipe.close_r();
        spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("B").with_ppid(root), 2, false)
        });
        let want = Want::me("a");
        ctx.ready(1);
        member::live(ctx.log, &want, libc::SIGUSR2, &[], &no_extra, false)
    });
    let m = collect(ctx, 2);
    let b = m[&2];
    ctx.log.line(&format!("SUBREAPER a={a} B={b}"));
    ctx.log.ready();
    wait_trigger();
    if ctx.corrupt {
        let _ = probe::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0);
    }
    let mut p = Vec::new();
    match probe::prctl_get_int(libc::PR_GET_CHILD_SUBREAPER) {
        Ok(1) => {}
        other => p.push(format!("PR_GET_CHILD_SUBREAPER is {other:?}")),
    }
    wake(&[a]);
    p.extend(member::reap_all(&[("a".to_string(), a)], 10_000));
    wl::sleep_ms(20);
    wake(&[b]);
    match probe::wait_child(b, 10_000) {
        Ok(st) if probe::exited_ok(st) => {}
        Ok(st) => p.push(format!("B ({b}) ended with {}", probe::describe_status(st))),
        Err(e) => p.push(format!("B ({b}) is not our child after its parent exited ({e})")),
    }
    finish(ctx, p, &[], &names(&["a", "B"]), "shape=subreaper");
}

/// A forks A1, then leaves the root's session with setsid(): A1 stays in
/// the root's session while its parent is not (no restore can fork A1
/// into that session again).
fn leftsession(ctx: &'static Ctx) -> ! {
    let a = spawn(move || {
        ctx.pipe.close_r();
        let a1 = spawn(move || {
            ctx.pipe.close_r();
            ctx.leaf(Want::me("A1"), 2, false)
        });
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            wl::die("setsid A");
        }
        let want = Want::me("A");
        ctx.ready(1);
        member::live(ctx.log, &want, libc::SIGUSR2, &[a1], &no_extra, false)
    });
    let m = collect(ctx, 2);
    ctx.log.line(&format!("LEFTSESSION A={a} A1={}", m[&2]));
    ctx.log.ready();
    wait_trigger();
    wake(&[a, m[&2]]);
    finish(ctx, Vec::new(), &[("A", a)], &names(&["A", "A1"]), "shape=leftsession");
}

fn main() {
    let args = Args::from_env();
    let log_path = args.required("log");
    let log: &'static Log = Box::leak(Box::new(Log::open(&log_path)));
    let shape = args.required("shape");
    wl::install_usr1();
    probe::install_flag(libc::SIGUSR2, 0);
    if matches!(shape.as_str(), "orphan" | "sessions" | "pdeathsig" | "subreaper")
        && probe::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0).is_err()
    {
        wl::die("PR_SET_CHILD_SUBREAPER");
    }
    let ctx: &'static Ctx = Box::leak(Box::new(Ctx {
        log,
        log_path,
        pipe: SetupPipe::new(),
        root: wl::getpid(),
        corrupt: args.flag("corrupt"),
    }));
    match shape.as_str() {
        "deep" => deep(ctx),
        "orphan" => orphan(ctx),
        "zombie" => zombie(ctx),
        "stopped" => stopped(ctx),
        "sessions" => sessions(ctx),
        "pdeathsig" => pdeathsig(ctx),
        "subreaper" => subreaper(ctx),
        "leftsession" => leftsession(ctx),
        o => wl::die(&format!(
            "--shape {o}: deep, orphan, zombie, stopped, sessions, pdeathsig, subreaper or leftsession"
        )),
    }
}

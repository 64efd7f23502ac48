//! End-to-end tests of whole trees (issue 3): one test per property.
//!
//! Each test starts a self-checking workload (integration/workloads/), waits
//! for READY, dumps it with `cryo dump -t PID -D DIR` (which must kill it),
//! decodes every image with crit's decoder, restores it with `cryo restore
//! -d --pidfile`, sends SIGUSR1 to the restored root and requires PASS.
//! A few tests look at the restored tree from outside first (thread count,
//! zombie and stopped states, parents, the pid namespace layout, the image
//! size). Every process is killed by pid at the end.
//!
//! These tests fail until the engine supports each property; the failure
//! names the property (`[name]`), the step (dump, restore, the workload's
//! check) and cryo's own one-line error. They need root.

use cryo_integration::e2e::{self, Dumped};
use cryo_integration::{bin, ppid_of, require_root, signal, wait_for_line, TempDir, Workload, LINE_TIMEOUT};
use std::path::Path;
use std::time::Duration;

/// checkpoint + restore, then `check(rpid, dump)` from outside, then the
/// workload's own check. Returns the verdict.
fn roundtrip_with(what: &str, bin: &Path, args: &[&str], check: &dyn Fn(i32, &Dumped)) -> String {
    let d = e2e::checkpoint(what, what, bin, args, Duration::from_millis(100));
    let rpid = e2e::restore(&d.sc, "1", what);
    check(rpid, &d);
    let v = e2e::trigger_restored(rpid, d.pid, &d.log, 1, what);
    d.assert_crit(what);
    v
}

fn simple(what: &str, bin: &Path, args: &[&str]) -> String {
    let (v, _d) = e2e::roundtrip(what, what, bin, args);
    assert!(v.starts_with("PASS"), "[{what}] {v}");
    v
}

// ---- threads ----------------------------------------------------------

fn threads(what: &str, n: usize, extra: &[&str]) {
    let ns = n.to_string();
    let mut args = vec!["--threads", ns.as_str()];
    args.extend_from_slice(extra);
    roundtrip_with(what, bin!("threads"), &args, &|rpid, _| {
        let tids = e2e::tids_of(rpid);
        assert_eq!(
            tids.len(),
            n,
            "[{what}] the restored process has {} threads, not {n}",
            tids.len()
        );
    });
}

#[test]
fn threads_1() {
    require_root!();
    threads("threads_1", 1, &[]);
}

#[test]
fn threads_8() {
    require_root!();
    threads("threads_8", 8, &[]);
}

#[test]
fn threads_64() {
    require_root!();
    threads("threads_64", 64, &[]);
}

#[test]
fn threads_rseq() {
    require_root!();
    threads("threads_rseq", 4, &["--check", "rseq"]);
}

// ---- tasks blocked in syscalls ----------------------------------------

fn blocked(what: &str, as_: &str, call: &str) {
    let v = simple(
        what,
        bin!("blocked"),
        &["--as", as_, "--check", call, "--sleep-ms", "3000"],
    );
    assert!(v.contains(&format!("calls={call}")), "[{what}] {v}");
}

#[test]
fn blocked_threads_futex() {
    require_root!();
    blocked("blocked_threads_futex", "threads", "futex");
}

#[test]
fn blocked_threads_nanosleep() {
    require_root!();
    blocked("blocked_threads_nanosleep", "threads", "nanosleep");
}

#[test]
fn blocked_threads_sleep_restart() {
    require_root!();
    blocked("blocked_threads_sleep_restart", "threads", "sleep-restart");
}

#[test]
fn blocked_threads_abs_sleep() {
    require_root!();
    blocked("blocked_threads_abs_sleep", "threads", "abs-sleep");
}

#[test]
fn blocked_threads_epoll() {
    require_root!();
    blocked("blocked_threads_epoll", "threads", "epoll");
}

#[test]
fn blocked_threads_pause() {
    require_root!();
    blocked("blocked_threads_pause", "threads", "pause");
}

#[test]
fn blocked_threads_wait4() {
    require_root!();
    blocked("blocked_threads_wait4", "threads", "wait4");
}

#[test]
fn blocked_procs_futex() {
    require_root!();
    blocked("blocked_procs_futex", "procs", "futex");
}

#[test]
fn blocked_procs_nanosleep() {
    require_root!();
    blocked("blocked_procs_nanosleep", "procs", "nanosleep");
}

#[test]
fn blocked_procs_sleep_restart() {
    require_root!();
    blocked("blocked_procs_sleep_restart", "procs", "sleep-restart");
}

#[test]
fn blocked_procs_abs_sleep() {
    require_root!();
    blocked("blocked_procs_abs_sleep", "procs", "abs-sleep");
}

#[test]
fn blocked_procs_epoll() {
    require_root!();
    blocked("blocked_procs_epoll", "procs", "epoll");
}

#[test]
fn blocked_procs_pause() {
    require_root!();
    blocked("blocked_procs_pause", "procs", "pause");
}

#[test]
fn blocked_procs_wait4() {
    require_root!();
    blocked("blocked_procs_wait4", "procs", "wait4");
}

// ---- signals ----------------------------------------------------------

#[test]
fn signals_actions() {
    require_root!();
    simple("signals_actions", bin!("signals"), &["--check", "actions"]);
}

#[test]
fn signals_ignored() {
    require_root!();
    simple("signals_ignored", bin!("signals"), &["--check", "ignored"]);
}

#[test]
fn signals_pending() {
    require_root!();
    simple("signals_pending", bin!("signals"), &["--check", "pending"]);
}

#[test]
fn signals_rt_queue() {
    require_root!();
    simple("signals_rt_queue", bin!("signals"), &["--check", "rt-queue"]);
}

#[test]
fn signals_thread_pending() {
    require_root!();
    simple(
        "signals_thread_pending",
        bin!("signals"),
        &["--check", "thread-pending"],
    );
}

// ---- timers -----------------------------------------------------------

#[test]
fn timers_itimers() {
    require_root!();
    simple("timers_itimers", bin!("timers"), &["--check", "itimers"]);
}

#[test]
fn timers_posix() {
    require_root!();
    simple("timers_posix", bin!("timers"), &["--check", "posix"]);
}

#[test]
fn timers_keep_wall_clock_deadlines_across_a_pause() {
    require_root!();
    // 3 s between dump and restore: the absolute timer's deadline (checked
    // to within 1 s by the workload) and the relative ones must not move
    // by those 3 s.
    let what = "timers_keep_wall_clock_deadlines_across_a_pause";
    let d = e2e::checkpoint(
        what,
        what,
        bin!("timers"),
        &["--check", "posix,itimers"],
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_secs(3));
    let rpid = e2e::restore(&d.sc, "1", what);
    let v = e2e::trigger_restored(rpid, d.pid, &d.log, 1, what);
    assert!(v.starts_with("PASS"), "[{what}] {v}");
}

#[test]
fn timers_overrun() {
    require_root!();
    simple("timers_overrun", bin!("timers"), &["--check", "overrun"]);
}

#[test]
fn timers_notify_another_thread() {
    require_root!();
    // A timer whose signal goes to a thread other than the leader (as
    // glibc's SIGEV_THREAD timers do): recreated once that thread exists.
    simple("timers_notify_another_thread", bin!("timers"), &["--check", "thread"]);
}

#[test]
fn timers_cpu() {
    require_root!();
    simple("timers_cpu", bin!("timers"), &["--check", "cpu"]);
}

// ---- credentials and seccomp ------------------------------------------

#[test]
fn creds_ids() {
    require_root!();
    simple("creds_ids", bin!("creds"), &["--check", "ids"]);
}

#[test]
fn creds_groups() {
    require_root!();
    simple("creds_groups", bin!("creds"), &["--check", "groups"]);
}

#[test]
fn creds_caps() {
    require_root!();
    simple("creds_caps", bin!("creds"), &["--check", "caps"]);
}

#[test]
fn creds_securebits() {
    require_root!();
    simple("creds_securebits", bin!("creds"), &["--check", "securebits"]);
}

#[test]
fn creds_no_new_privs() {
    require_root!();
    simple("creds_no_new_privs", bin!("creds"), &["--check", "nnp"]);
}

#[test]
fn seccomp_filter() {
    require_root!();
    simple("seccomp_filter", bin!("seccomp"), &["--mode", "filter"]);
}

#[test]
fn seccomp_strict() {
    require_root!();
    simple("seccomp_strict", bin!("seccomp"), &["--mode", "strict"]);
}

// ---- per-process attributes -------------------------------------------

fn attr(what: &str, check: &str) {
    let d = TempDir::new("attrs-dir");
    simple(
        what,
        bin!("attrs"),
        &["--check", check, "--dir", cryo_integration::s(d.path())],
    );
}

#[test]
fn attrs_sched() {
    require_root!();
    attr("attrs_sched", "sched");
}

#[test]
fn attrs_nice() {
    require_root!();
    attr("attrs_nice", "nice");
}

#[test]
fn attrs_affinity() {
    require_root!();
    attr("attrs_affinity", "affinity");
}

#[test]
fn attrs_personality() {
    require_root!();
    attr("attrs_personality", "personality");
}

#[test]
fn attrs_umask() {
    require_root!();
    attr("attrs_umask", "umask");
}

#[test]
fn attrs_dumpable() {
    require_root!();
    attr("attrs_dumpable", "dumpable");
}

#[test]
fn attrs_pdeathsig() {
    require_root!();
    attr("attrs_pdeathsig", "pdeathsig");
}

#[test]
fn attrs_subreaper() {
    require_root!();
    attr("attrs_subreaper", "subreaper");
}

#[test]
fn attrs_rlimits() {
    require_root!();
    attr("attrs_rlimits", "rlimits");
}

#[test]
fn attrs_comm() {
    require_root!();
    attr("attrs_comm", "comm");
}

#[test]
fn attrs_cwd() {
    require_root!();
    attr("attrs_cwd", "cwd");
}

#[test]
fn attrs_root() {
    require_root!();
    attr("attrs_root", "root");
}

// ---- memory shapes ----------------------------------------------------

#[test]
fn mem_holes() {
    require_root!();
    simple("mem_holes", bin!("memshape"), &["--check", "holes"]);
}

#[test]
fn mem_guard_regions() {
    require_root!();
    simple("mem_guard_regions", bin!("memshape"), &["--check", "guard"]);
}

#[test]
fn mem_growsdown() {
    require_root!();
    simple("mem_growsdown", bin!("memshape"), &["--check", "growsdown"]);
}

#[test]
fn mem_madvise_flags() {
    require_root!();
    simple("mem_madvise_flags", bin!("memshape"), &["--check", "madvise"]);
}

#[test]
fn mem_thp() {
    require_root!();
    simple("mem_thp", bin!("memshape"), &["--check", "thp"]);
}

#[test]
fn mem_mlock() {
    require_root!();
    simple("mem_mlock", bin!("memshape"), &["--check", "mlock"]);
}

#[test]
fn mem_sparse_4gib_small_image() {
    require_root!();
    let what = "mem_sparse_4gib_small_image";
    let d = e2e::checkpoint(
        what,
        what,
        bin!("memshape"),
        &["--check", "sparse", "--gib", "4"],
        Duration::from_millis(100),
    );
    let pages = e2e::images_bytes(&d.sc.img, "pages-");
    let all = e2e::images_bytes(&d.sc.img, "");
    assert!(
        pages < 64 << 20 && all < 96 << 20,
        "[{what}] the images of a 4 GiB mapping with 16 touched pages take {pages} bytes of pages ({all} in all)"
    );
    let rpid = e2e::restore(&d.sc, "1", what);
    let v = e2e::trigger_restored(rpid, d.pid, &d.log, 1, what);
    assert!(v.contains("resident=16"), "[{what}] {v}");
    d.assert_crit(what);
}

#[test]
fn mem_deleted_exe() {
    require_root!();
    // The workload runs a copy of itself that it then deletes: the exe
    // link and the text mappings point at a deleted file, whose content
    // the dump saves as a ghost file and the restore maps again.
    let dir = TempDir::new("delexe");
    simple(
        "mem_deleted_exe",
        bin!("memshape"),
        &["--check", "deleted-exe", "--dir", cryo_integration::s(dir.path())],
    );
}

#[test]
fn mem_deleted_file_mappings() {
    require_root!();
    // A private (partly copied) and a shared mapping of one unlinked file:
    // restored from one ghost file, so they still share its pages.
    let dir = TempDir::new("deldata");
    simple(
        "mem_deleted_file_mappings",
        bin!("memshape"),
        &["--check", "deleted-data", "--dir", cryo_integration::s(dir.path())],
    );
}

// ---- tree shapes ------------------------------------------------------

fn shape(what: &str, sh: &str, check: &dyn Fn(i32, &Dumped)) {
    let v = roundtrip_with(what, bin!("shapes"), &["--shape", sh], check);
    assert!(v.contains(&format!("shape={sh}")), "[{what}] {v}");
}

/// The host pid of the tree member that is `inner` in the restored tree.
fn member(what: &str, rpid: i32, inner: i32) -> i32 {
    e2e::host_pid_in_ns(rpid, inner)
        .unwrap_or_else(|| panic!("[{what}] no process is pid {inner} in the namespace of the restored root {rpid}"))
}

#[test]
fn tree_grandchildren() {
    require_root!();
    shape("tree_grandchildren", "deep", &|rpid, _| {
        let n = e2e::tree_of(rpid).len();
        assert_eq!(n, 6, "[tree_grandchildren] the restored tree has {n} processes, not 6");
    });
}

#[test]
fn tree_orphans_reparented() {
    require_root!();
    let what = "tree_orphans_reparented";
    shape(what, "orphan", &|rpid, d| {
        let l = e2e::line_fields(&d.log, "ORPHANS ", what);
        for f in &l[..2] {
            let inner: i32 = f.split('=').nth(1).and_then(|x| x.parse().ok()).expect("orphan pid");
            let h = member(what, rpid, inner);
            assert_eq!(
                ppid_of(h),
                Some(rpid),
                "[{what}] orphan {inner} (host {h}) is not the root's child"
            );
        }
    });
}

#[test]
fn tree_zombies() {
    require_root!();
    let what = "tree_zombies";
    shape(what, "zombie", &|rpid, d| {
        let z: Vec<i32> = e2e::line_fields(&d.log, "ZOMBIES ", what)
            .iter()
            .map(|x| x.parse().expect("zombie pid"))
            .collect();
        for (k, &inner) in z.iter().enumerate() {
            let h = member(what, rpid, inner);
            assert_eq!(
                cryo_integration::pid_state(h),
                Some('Z'),
                "[{what}] zombie {inner} (host {h}) is not a zombie"
            );
            if k < 2 {
                assert_eq!(
                    ppid_of(h),
                    Some(rpid),
                    "[{what}] zombie {inner}'s parent is not the root"
                );
            }
        }
    });
}

#[test]
fn tree_stopped_child() {
    require_root!();
    let what = "tree_stopped_child";
    shape(what, "stopped", &|rpid, d| {
        let inner: i32 = e2e::line_fields(&d.log, "STOPPED ", what)[0].parse().expect("pid");
        let h = member(what, rpid, inner);
        let st = e2e::wait_state(h, 'T', Duration::from_millis(300), Duration::from_secs(5));
        assert_eq!(
            st,
            Some('T'),
            "[{what}] the stopped child {inner} (host {h}) does not stay stopped"
        );
        signal(h, libc::SIGCONT).unwrap_or_else(|e| panic!("[{what}] {e}"));
        std::thread::sleep(Duration::from_millis(50));
    });
}

#[test]
fn tree_sessions_and_groups() {
    require_root!();
    // Groups and sessions of every kind, among them a group whose leader
    // was killed (its member a child of the root) and a session and group
    // whose leader was killed (its member re-parented to the root, a
    // subreaper): the restore recreates those with placeholder leaders.
    shape("tree_sessions_and_groups", "sessions", &|_, _| {});
}

#[test]
fn tree_session_left_by_the_parent_is_refused() {
    require_root!();
    // A1 is in the root's session but its parent A left it with setsid():
    // sessions are entered only by fork, so no restore can rebuild this.
    e2e::refused(
        "tree_session_left_by_the_parent_is_refused",
        bin!("shapes"),
        &["--shape", "leftsession"],
        "cannot be recreated",
    );
}

#[test]
fn tree_pdeathsig() {
    require_root!();
    shape("tree_pdeathsig", "pdeathsig", &|_, _| {});
}

#[test]
fn tree_child_subreaper() {
    require_root!();
    shape("tree_child_subreaper", "subreaper", &|_, _| {});
}

#[test]
fn tree_own_pid_namespace() {
    require_root!();
    let what = "tree_own_pid_namespace";
    let sc = e2e::Scratch::new(what);
    let log = sc.path("wl.log");
    let mut w = Workload::spawn(bin!("pidns"), &[], &log).unwrap_or_else(|e| panic!("[{what}] spawn: {e}"));
    let init: i32 = e2e::line_fields(&log, "NSINIT ", what)[0].parse().expect("init pid");
    sc.cl.pid(init);
    wait_for_line(&log, "READY 1", LINE_TIMEOUT).unwrap_or_else(|e| panic!("[{what}] {e}"));
    sc.cl.tree(init);
    std::thread::sleep(Duration::from_millis(100));
    e2e::dump(&sc, init, &[], what);
    let st = w
        .wait_exit(e2e::GONE_TIMEOUT)
        .unwrap_or_else(|| panic!("[{what}] the launcher still runs: the dump did not end the init {init}"));
    assert_eq!(
        st.code(),
        Some(128 + 9),
        "[{what}] the init should have been killed by the dump: {st:?}"
    );
    let crit = e2e::crit_decode_all(&sc.img);
    let rpid = e2e::restore(&sc, "1", what);
    let ns = e2e::nspids(rpid);
    assert_eq!(
        ns.len(),
        2,
        "[{what}] the restored init {rpid} should be pid 1 of a namespace right below ours, NSpid {ns:?}"
    );
    let v = e2e::trigger_restored(rpid, 1, &log, 1, what);
    assert!(v.starts_with("PASS pidns init=1"), "[{what}] {v}");
    if let Err(e) = crit {
        panic!("[{what}] {e}");
    }
}

// ---- faults: the tree changes while it is frozen -------------------------

#[test]
fn churn_plain_passes_and_detects_corruption() {
    // No cryo involved: the workload's own check passes, and fails when the
    // memory it guards is changed.
    let tmp = TempDir::new("churn-plain");
    let log = tmp.join("wl.log");
    let w = Workload::spawn(bin!("churn"), &[], &log).expect("spawn churn");
    w.wait_ready().expect("churn ready");
    cryo_integration::signal(w.pid, libc::SIGUSR1).unwrap();
    let v = cryo_integration::wait_for_line(&log, "PASS", cryo_integration::LINE_TIMEOUT).expect("churn verdict");
    assert!(v.starts_with("PASS"), "{v}");
    let log2 = tmp.join("wl2.log");
    let w2 = Workload::spawn(bin!("churn"), &["--corrupt"], &log2).expect("spawn churn");
    w2.wait_ready().expect("churn ready");
    cryo_integration::signal(w2.pid, libc::SIGUSR1).unwrap();
    let v = cryo_integration::wait_for_line(&log2, "FAIL", cryo_integration::LINE_TIMEOUT).expect("churn verdict");
    assert!(v.contains("checksum"), "{v}");
}

#[test]
fn tree_forking_and_threading_while_frozen() {
    require_root!();
    // Children are forked and reaped, and threads created and joined, all
    // the time: the freeze must settle on one consistent tree, whatever it
    // catches (a child just born, a zombie, a thread half created).
    for round in 0..3 {
        simple(&format!("tree_churn_{round}"), bin!("churn"), &[]);
    }
}

//! End-to-end tests of terminals: a raw-mode program under a shell in
//! tmux, dumped with `--shell-job` and restored in another tmux session.
//!
//! The workload (`ttyraw`) judges itself; the tests type keys into the
//! panes with `tmux send-keys` and read its verdict from its log. tmux
//! servers run on their own sockets and are killed by the Cleanup.

use cryo_integration::cycle::{crit_decodes_all, crit_json, dump, Scratch, GONE_TIMEOUT};
use cryo_integration::{
    bin, cryo_bin, describe, log_tail, read_pidfile, s, signal, wait_for_line, wait_for_verdict, wait_pid_dead,
    LINE_TIMEOUT,
};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tmux server on its own socket, killed at the end through the Cleanup.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(tag: &str, sc: &Scratch) -> Tmux {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let socket = format!("cryo-tty-{tag}-{}-{n}", std::process::id());
        sc.cl.tmux(&socket);
        Tmux { socket }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux (install it with hack/setup)")
    }

    /// A detached session of `cols`x`rows` running `argv` directly.
    fn session(&self, name: &str, cols: u16, rows: u16, argv: &[&str]) {
        let (c, r) = (cols.to_string(), rows.to_string());
        let mut args = vec!["new-session", "-d", "-s", name, "-x", &c, "-y", &r];
        args.extend_from_slice(argv);
        let out = self.cmd(&args);
        assert!(out.status.success(), "tmux new-session: {}", describe(&out));
        let out = self.cmd(&["set-option", "-t", name, "remain-on-exit", "on"]);
        assert!(out.status.success(), "tmux set-option: {}", describe(&out));
    }

    /// Types `keys` literally (no Enter unless `enter`).
    fn keys(&self, name: &str, keys: &str, enter: bool) {
        let out = self.cmd(&["send-keys", "-t", name, "-l", keys]);
        assert!(out.status.success(), "tmux send-keys: {}", describe(&out));
        if enter {
            let out = self.cmd(&["send-keys", "-t", name, "Enter"]);
            assert!(out.status.success(), "tmux send-keys Enter: {}", describe(&out));
        }
    }

    fn pane_pid(&self, name: &str) -> i32 {
        let out = self.cmd(&["list-panes", "-t", name, "-F", "#{pane_pid}"]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pane pid: {}", describe(&out)))
    }

    fn screen(&self, name: &str) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-J", "-t", name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn require_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        cryo_integration::skip("tmux is not installed (hack/setup)");
    }
    ok
}

fn ready_pid(log: &Path) -> i32 {
    let l = wait_for_line(log, "READY ", LINE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    l.trim_start_matches("READY ").trim().parse().expect("READY pid")
}

fn wait_until(mut pred: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + LINE_TIMEOUT;
    while Instant::now() < end {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `ttyraw` as a tmux pane's own command: PASS, and FAIL with --corrupt.
fn ttyraw_plain(corrupt: bool) -> Result<String, String> {
    let sc = Scratch::new(if corrupt { "ttyraw-plain-bad" } else { "ttyraw-plain" });
    let t = Tmux::new("plain", &sc);
    let log = sc.path("wl.log");
    let mut argv = vec![s(bin!("ttyraw")), "--log", s(&log), "--rows", "30", "--cols", "90"];
    if corrupt {
        argv.push("--corrupt");
    }
    t.session("p", 90, 30, &argv);
    let pid = ready_pid(&log);
    sc.cl.pid(pid);
    std::thread::sleep(Duration::from_millis(100));
    t.keys("p", "x", false);
    std::thread::sleep(Duration::from_millis(200));
    signal(pid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    wait_for_verdict(&log, LINE_TIMEOUT)
}

#[test]
fn ttyraw_plain_passes_and_detects_a_cooked_terminal() {
    if !require_tmux() {
        return;
    }
    let v = ttyraw_plain(false).unwrap_or_else(|e| panic!("{e}"));
    assert!(v.contains("ws=30x90"), "{v}");
    let e = ttyraw_plain(true).expect_err("the corrupted workload must FAIL");
    assert!(e.contains("termios") && e.contains("key"), "{e}");
}

/// The shell-job case with a full-screen program: `ttyraw` started from an
/// interactive bash in tmux A (160x50), dumped with --shell-job, restored
/// with --shell-job as the command of tmux B (100x40). B's terminal starts
/// cooked: only the restored termios makes the key typed without Enter
/// reach the program. The size is B's, and the program got a SIGWINCH.
#[test]
fn raw_mode_program_under_a_shell_continues_in_another_tmux() {
    cryo_integration::require_root!();
    if !require_tmux() {
        return;
    }
    let sc = Scratch::new("ttyraw-shelljob");
    let a = Tmux::new("a", &sc);
    let b = Tmux::new("b", &sc);
    a.session("a", 160, 50, &["bash", "--norc", "--noprofile", "-i"]);
    sc.cl.pid(a.pane_pid("a"));
    let log = sc.path("wl.log");
    let cmd = format!(
        "{} --log {} --rows 40 --cols 100 --expect-winch",
        s(bin!("ttyraw")),
        s(&log)
    );
    a.keys("a", &cmd, true);
    let pid = ready_pid(&log);
    sc.cl.pid(pid);
    assert!(
        wait_until(|| a.screen("a").contains("raw mode on")),
        "no output on screen A:\n{}",
        a.screen("a")
    );

    dump(&sc, pid, &["--shell-job"]);
    assert!(
        wait_pid_dead(pid, GONE_TIMEOUT),
        "ttyraw {pid} still runs after the dump"
    );
    let images = crit_decodes_all(&sc.img);
    assert!(images.contains(&"tty-info.img".to_string()), "{images:?}");
    let ti = crit_json(&sc.img.join("tty-info.img"));
    let lflag = ti["entries"][0]["termios"]["c_lflag"].as_u64().expect("c_lflag");
    assert_eq!(
        lflag & u64::from(libc::ICANON | libc::ECHO),
        0,
        "dumped termios is not raw: {ti}"
    );

    let pf = sc.path("pidfile");
    sc.cl.pidfile(&pf);
    let rlog = sc.path("restore.log");
    let cryo = cryo_bin();
    b.session(
        "b",
        100,
        40,
        &[
            s(&cryo),
            "restore",
            "-D",
            s(&sc.img),
            "--shell-job",
            "--pidfile",
            s(&pf),
            "-o",
            s(&rlog),
            "-v4",
        ],
    );
    assert!(
        wait_until(|| pf.exists()),
        "the restore in tmux B wrote no pidfile:\n{}\n--- restore log ---\n{}",
        b.screen("b"),
        log_tail(&rlog, 30)
    );
    let rpid = read_pidfile(&pf).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(200));
    b.keys("b", "x", false);
    std::thread::sleep(Duration::from_millis(200));
    signal(rpid, libc::SIGUSR1).unwrap_or_else(|e| panic!("{e}"));
    let v = wait_for_verdict(&log, LINE_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "{e}\n--- screen B ---\n{}\n--- restore log ---\n{}",
            b.screen("b"),
            log_tail(&rlog, 30)
        )
    });
    assert!(v.contains("ws=40x100") && !v.contains("winch=0"), "{v}");
}

/// The vim binary of this machine (hack/setup installs vim-tiny).
fn find_vim() -> Option<&'static str> {
    ["/usr/bin/vim", "/usr/bin/vim.tiny", "/usr/bin/vim.basic"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Real vim, in insert mode with typed text, under a shell in tmux A:
/// dumped with --shell-job, restored in tmux B, where the rest of the text
/// and `:wq` are typed. The file must hold both parts: vim kept its buffer,
/// its mode and its raw terminal.
#[test]
fn real_vim_under_a_shell_continues_in_another_tmux() {
    cryo_integration::require_root!();
    if !require_tmux() {
        return;
    }
    let Some(vim) = find_vim() else {
        cryo_integration::skip("vim is not installed (hack/setup installs vim-tiny)");
        return;
    };
    let sc = Scratch::new("vim-shelljob");
    let a = Tmux::new("va", &sc);
    let b = Tmux::new("vb", &sc);
    a.session("a", 120, 40, &["bash", "--norc", "--noprofile", "-i"]);
    let shell = a.pane_pid("a");
    sc.cl.pid(shell);
    let file = sc.path("note.txt");
    a.keys("a", &format!("{vim} -u NONE -N -n {}", s(&file)), true);
    let mut vpid = 0;
    assert!(
        wait_until(|| {
            vpid = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
                .unwrap_or(0);
            vpid > 0 && a.screen("a").contains('~')
        }),
        "vim did not start in tmux A:\n{}",
        a.screen("a")
    );
    sc.cl.pid(vpid);
    a.keys("a", "ihello from A", false);
    assert!(
        wait_until(|| a.screen("a").contains("hello from A")),
        "vim did not echo the typed text:\n{}",
        a.screen("a")
    );

    dump(&sc, vpid, &["--shell-job"]);
    assert!(
        wait_pid_dead(vpid, GONE_TIMEOUT),
        "vim {vpid} still runs after the dump"
    );
    crit_decodes_all(&sc.img);

    let pf = sc.path("pidfile");
    sc.cl.pidfile(&pf);
    let rlog = sc.path("restore.log");
    let cryo = cryo_bin();
    b.session(
        "b",
        100,
        30,
        &[
            s(&cryo),
            "restore",
            "-D",
            s(&sc.img),
            "--shell-job",
            "--pidfile",
            s(&pf),
            "-o",
            s(&rlog),
        ],
    );
    assert!(
        wait_until(|| pf.exists()),
        "the restore in tmux B wrote no pidfile:\n{}\n--- restore log ---\n{}",
        b.screen("b"),
        log_tail(&rlog, 30)
    );
    std::thread::sleep(Duration::from_millis(300));
    b.keys("b", ", then B", false);
    let out = b.cmd(&["send-keys", "-t", "b", "Escape"]);
    assert!(out.status.success(), "tmux send-keys Escape: {}", describe(&out));
    std::thread::sleep(Duration::from_millis(200));
    b.keys("b", ":wq", true);
    let want = "hello from A, then B\n";
    assert!(
        wait_until(|| std::fs::read_to_string(&file).is_ok_and(|t| t == want)),
        "the file holds {:?}, not {want:?}\n--- screen B ---\n{}\n--- restore log ---\n{}",
        std::fs::read_to_string(&file).unwrap_or_default(),
        b.screen("b"),
        log_tail(&rlog, 30)
    );
}

// ---- a pty pair inside the tree ---------------------------------------------

#[test]
fn ptypair_plain_passes_and_detects_changed_input() {
    use cryo_integration::cycle::{expect_plain_fail, expect_plain_pass};
    expect_plain_pass(bin!("ptypair"), &[]);
    expect_plain_fail(bin!("ptypair"), &["--corrupt"], "partjunk");
}

#[test]
fn ptypair_roundtrip() {
    cryo_integration::require_root!();
    let (v, images, sc) = cryo_integration::cycle::roundtrip("ptypair", bin!("ptypair"), &[]);
    assert!(v.contains("pty pair"), "{v}");
    let log = sc.path("wl.log");
    let members = cryo_integration::log_lines(&log)
        .iter()
        .filter(|l| l.starts_with("MEMBER ") && l.contains(" PASS"))
        .count();
    assert_eq!(members, 2, "{}", log_tail(&log, 20));
    for name in ["tty-info.img", "tty-data.img"] {
        assert!(images.contains(&name.to_string()), "{name} missing: {images:?}");
    }
    let info = crit_json(&sc.img.join("tty-info.img"));
    let entries = info["entries"].as_array().expect("entries");
    // Two pairs: M and its slave, and the locked L.
    assert_eq!(entries.len(), 3, "{info}");
    assert!(
        entries.iter().any(|e| e["locked"] == true) && entries.iter().any(|e| e["packet_mode"] == true),
        "{info}"
    );
    assert!(
        entries.iter().any(|e| e["sid"].as_u64().unwrap_or(0) != 0),
        "no session recorded: {info}"
    );
}

//! The CRIU command-line dialect: what cryo does when run as `criu`.
//!
//! `criu --version`, `criu check [--feature F]`, `criu dump -t PID -D DIR
//! ...`, `criu restore -D DIR ...` and `criu swrk <fd>` are mapped onto the
//! engine with CRIU's option spellings (getopt_long style: `--opt=v`,
//! `--opt v`, `-t PID`, `-tPID`, `-v4`, `-vvv`). Options that only tune
//! CRIU or permit resources the engine does not dump anyway are accepted;
//! options asking for something cryo cannot do are refused with the reason.
//! The same option table reads CRIU configuration files (one long option
//! per line without the dashes), which the RPC server applies too.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::image::pb::{CriuCgMode, CriuOpts};
use crate::rpc::CRIU_VERSION;
use crate::{dump, kerndat, log, restore};

/// Errors of the command line itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("Unknown option {opt}")]
    Unknown { opt: String },
    #[error("Option {opt} needs an argument")]
    MissingArg { opt: String },
    #[error("Option {opt} takes no argument (given {value:?})")]
    UnexpectedArg { opt: String, value: String },
    #[error("Bad value {value:?} for {opt}")]
    BadValue { opt: String, value: String },
    #[error("Option {opt} is not supported by cryo ({why})")]
    Unsupported { opt: String, why: &'static str },
    #[error("{path}:{line}: {text:?} is not an option line")]
    BadConfigLine { path: String, line: usize, text: String },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arg {
    No,
    Required,
    Optional,
}

/// What an option does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Act {
    Tree,
    ImagesDir,
    WorkDir,
    LogFile,
    Verbosity,
    ShellJob,
    LeaveRunning,
    Detach,
    Pidfile,
    TcpEstablished,
    ExtUnixSk,
    FileLocks,
    EvasiveDevices,
    LinkRemap,
    TcpClose,
    SkipInFlight,
    AutoDedup,
    ManageCgroups,
    GhostLimit,
    FreezeCgroup,
    Root,
    /// `--external mnt[KEY]:VAL` / `net[INO]:KEY`.
    External,
    /// `-M KEY:VAL` (CRIU's older spelling of `--external mnt[KEY]:VAL`).
    ExtMountMap,
    /// `--inherit-fd fd[N]:KEY`.
    InheritFd,
    TrackMem,
    PrevImagesDir,
    PageServer,
    Address,
    Port,
    LazyPages,
    /// `--veth-pair IN=OUT`.
    VethPair,
    /// `--empty-ns net`.
    EmptyNs,
    Feature,
    Config,
    NoDefaultConfig,
    Version,
    Help,
    /// Accepted; no effect in cryo (tuning, display, CRIU internals).
    Ignored,
    /// Refused with the reason.
    Refused(&'static str),
}

struct Spec {
    long: &'static str,
    short: Option<char>,
    arg: Arg,
    act: Act,
}

const TLS: &str = "cryo's page server speaks plain TCP";

macro_rules! o {
    ($long:literal, $short:expr, $arg:ident, $act:expr) => {
        Spec {
            long: $long,
            short: $short,
            arg: Arg::$arg,
            act: $act,
        }
    };
}

const SPECS: &[Spec] = &[
    o!("tree", Some('t'), Required, Act::Tree),
    o!("images-dir", Some('D'), Required, Act::ImagesDir),
    o!("work-dir", Some('W'), Required, Act::WorkDir),
    o!("log-file", Some('o'), Required, Act::LogFile),
    o!("verbosity", Some('v'), Optional, Act::Verbosity),
    o!("shell-job", Some('j'), No, Act::ShellJob),
    o!("leave-running", Some('R'), No, Act::LeaveRunning),
    o!("restore-detached", Some('d'), No, Act::Detach),
    o!("pidfile", None, Required, Act::Pidfile),
    o!("tcp-established", None, No, Act::TcpEstablished),
    o!("ext-unix-sk", Some('x'), Optional, Act::ExtUnixSk),
    o!("file-locks", Some('l'), No, Act::FileLocks),
    o!("evasive-devices", None, No, Act::EvasiveDevices),
    o!("link-remap", None, No, Act::LinkRemap),
    o!("tcp-close", None, No, Act::TcpClose),
    o!("skip-in-flight", None, No, Act::SkipInFlight),
    o!("tcp-skip-in-flight", None, No, Act::SkipInFlight),
    o!("auto-dedup", None, No, Act::AutoDedup),
    o!("manage-cgroups", None, Optional, Act::ManageCgroups),
    o!("ghost-limit", None, Required, Act::GhostLimit),
    o!("freeze-cgroup", None, Required, Act::FreezeCgroup),
    o!("root", Some('r'), Required, Act::Root),
    o!("feature", None, Required, Act::Feature),
    o!("config", None, Required, Act::Config),
    o!("no-default-config", None, No, Act::NoDefaultConfig),
    o!("version", Some('V'), No, Act::Version),
    o!("help", Some('h'), No, Act::Help),
    // Accepted, no effect.
    o!("log-pid", None, No, Act::Ignored),
    o!("display-stats", None, No, Act::Ignored),
    o!("timeout", None, Required, Act::Ignored),
    o!("cpu-cap", None, Optional, Act::Ignored),
    o!("force-irmap", None, No, Act::Ignored),
    o!("irmap-scan-path", None, Required, Act::Ignored),
    o!("weak-sysctls", None, No, Act::Ignored),
    o!("network-lock", None, Required, Act::Ignored),
    o!("pre-dump-mode", None, Required, Act::Ignored),
    o!("file-validation", None, Required, Act::Ignored),
    o!("skip-file-rwx-check", None, No, Act::Ignored),
    o!("libdir", Some('L'), Required, Act::Ignored),
    o!("all", None, No, Act::Ignored),
    o!("extra", None, No, Act::Ignored),
    o!("experimental", None, No, Act::Ignored),
    o!("enable-fs", None, Required, Act::Ignored),
    o!("skip-mnt", None, Required, Act::Ignored),
    o!("cgroup-props", None, Required, Act::Ignored),
    o!("cgroup-props-file", None, Required, Act::Ignored),
    o!("cgroup-dump-controller", None, Required, Act::Ignored),
    o!("cgroup-yard", None, Required, Act::Ignored),
    o!("mntns-compat-mode", None, No, Act::Ignored),
    // Refused.
    o!(
        "leave-stopped",
        Some('s'),
        No,
        Act::Refused("stopping the tree after the dump is not implemented")
    ),
    o!(
        "restore-sibling",
        Some('S'),
        No,
        Act::Refused("it is only meaningful for swrk callers")
    ),
    o!("inherit-fd", None, Required, Act::InheritFd),
    o!("ext-mount-map", Some('M'), Required, Act::ExtMountMap),
    o!("external", None, Required, Act::External),
    o!("empty-ns", None, Required, Act::EmptyNs),
    o!("veth-pair", None, Required, Act::VethPair),
    o!("track-mem", None, No, Act::TrackMem),
    o!("prev-images-dir", None, Required, Act::PrevImagesDir),
    o!("page-server", None, No, Act::PageServer),
    o!("address", None, Required, Act::Address),
    o!("port", None, Required, Act::Port),
    o!("lazy-pages", None, No, Act::LazyPages),
    o!(
        "join-ns",
        Some('J'),
        Required,
        Act::Refused("joining existing namespaces on restore is not implemented")
    ),
    o!(
        "cgroup-root",
        None,
        Required,
        Act::Refused("cgroups are not restored: the tree stays in the caller's cgroup")
    ),
    o!(
        "enable-external-sharing",
        None,
        No,
        Act::Refused("external mounts are named one by one with --external mnt[KEY]:VAL")
    ),
    o!(
        "enable-external-masters",
        None,
        No,
        Act::Refused("external mounts are named one by one with --external mnt[KEY]:VAL")
    ),
    o!(
        "auto-ext-mnt",
        None,
        No,
        Act::Refused("external mounts are named one by one with --external mnt[KEY]:VAL")
    ),
    o!(
        "status-fd",
        None,
        Required,
        Act::Refused("cryo has no lazy-pages daemon or detached page server to report on")
    ),
    o!("tls", None, No, Act::Refused(TLS)),
    o!("tls-cacert", None, Required, Act::Refused(TLS)),
    o!("tls-cacrl", None, Required, Act::Refused(TLS)),
    o!("tls-cert", None, Required, Act::Refused(TLS)),
    o!("tls-key", None, Required, Act::Refused(TLS)),
    o!("tls-no-cn-verify", None, No, Act::Refused(TLS)),
    o!(
        "ps-socket",
        None,
        Required,
        Act::Refused("cryo's page server listens on TCP only")
    ),
    o!(
        "action-script",
        None,
        Required,
        Act::Refused("action scripts are not run")
    ),
    o!("exec-cmd", None, No, Act::Refused("not implemented")),
    o!(
        "lsm-profile",
        None,
        Required,
        Act::Refused("LSM labels are not applied")
    ),
    o!(
        "lsm-mount-context",
        None,
        Required,
        Act::Refused("LSM labels are not applied")
    ),
    o!("unprivileged", None, No, Act::Refused("cryo needs root")),
    o!("stream", None, No, Act::Refused("use cryo dump --tar")),
];

/// A parsed CRIU command line (or configuration file).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    /// The first operand (dump, restore, check, swrk, ...).
    pub command: Option<String>,
    /// Further operands (swrk's fd).
    pub operands: Vec<String>,
    pub tree: Option<i32>,
    pub images_dir: Option<PathBuf>,
    pub work_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub verbosity: Option<u8>,
    pub shell_job: bool,
    pub leave_running: bool,
    pub detach: bool,
    pub pidfile: Option<PathBuf>,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    pub evasive_devices: bool,
    pub link_remap: bool,
    pub tcp_close: bool,
    pub skip_in_flight: bool,
    pub auto_dedup: bool,
    pub manage_cgroups: Option<CriuCgMode>,
    pub ghost_limit: Option<u32>,
    pub freeze_cgroup: Option<String>,
    pub root: Option<String>,
    /// Mounts named external: dump mountpoint → name, restore name → path.
    pub ext_mnt: Vec<(String, String)>,
    /// Other `--external` resources, as given (`net[INO]:KEY`).
    pub external: Vec<String>,
    /// `--inherit-fd fd[N]:KEY` as (KEY, N).
    pub inherit_fd: Vec<(String, i32)>,
    pub track_mem: bool,
    pub prev_images_dir: Option<PathBuf>,
    pub page_server: bool,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub lazy_pages: bool,
    /// `--veth-pair IN=OUT` as (IN, OUT).
    pub veth_pairs: Vec<(String, String)>,
    /// `--empty-ns net`.
    pub empty_ns_net: bool,
    pub features: Vec<String>,
    pub config: Option<PathBuf>,
    pub no_default_config: bool,
    pub version: bool,
    pub help: bool,
    /// Accepted options with no effect, as given (for the log).
    pub ignored: Vec<String>,
}

fn find_long(name: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.long == name)
}

fn find_short(c: char) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.short == Some(c))
}

/// CRIU's size suffixes (K, M, G) for --ghost-limit.
fn parse_size(v: &str) -> Option<u32> {
    let (num, mul) = match v.char_indices().last()? {
        (i, 'K' | 'k') => (&v[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&v[..i], 1 << 20),
        (i, 'G' | 'g') => (&v[..i], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)?.try_into().ok()
}

fn cg_mode(v: Option<&str>) -> Option<CriuCgMode> {
    Some(match v {
        None => CriuCgMode::Soft,
        Some("none") => CriuCgMode::CgNone,
        Some("props") => CriuCgMode::Props,
        Some("soft") => CriuCgMode::Soft,
        Some("full") => CriuCgMode::Full,
        Some("strict") => CriuCgMode::Strict,
        Some("ignore") => CriuCgMode::Ignore,
        _ => return None,
    })
}

impl Options {
    fn apply(&mut self, spec: &Spec, shown: &str, value: Option<String>) -> Result<(), CliError> {
        let bad = |v: &str| CliError::BadValue {
            opt: shown.to_string(),
            value: v.to_string(),
        };
        let val = || value.clone().unwrap_or_default();
        match spec.act {
            Act::Tree => self.tree = Some(val().parse().ok().filter(|&p: &i32| p > 0).ok_or_else(|| bad(&val()))?),
            Act::ImagesDir => self.images_dir = Some(val().into()),
            Act::WorkDir => self.work_dir = Some(val().into()),
            Act::LogFile => self.log_file = Some(val().into()),
            Act::Verbosity => {
                // CRIU's level starts at 2; each bare -v adds one.
                let base = self.verbosity.unwrap_or(2);
                self.verbosity = Some(
                    match value.as_deref() {
                        None => base.saturating_add(1),
                        // -vvv: getopt sees "vv" as the optional argument.
                        Some(v) if !v.is_empty() && v.chars().all(|c| c == 'v') => {
                            base.saturating_add(v.len() as u8 + 1)
                        }
                        Some(v) => v.parse::<u8>().map_err(|_| bad(v))?,
                    }
                    .min(4),
                )
            }
            Act::ShellJob => self.shell_job = true,
            Act::LeaveRunning => self.leave_running = true,
            Act::Detach => self.detach = true,
            Act::Pidfile => self.pidfile = Some(val().into()),
            Act::TcpEstablished => self.tcp_established = true,
            Act::ExtUnixSk => self.ext_unix_sk = true,
            Act::FileLocks => self.file_locks = true,
            Act::EvasiveDevices => self.evasive_devices = true,
            Act::LinkRemap => self.link_remap = true,
            Act::TcpClose => self.tcp_close = true,
            Act::SkipInFlight => self.skip_in_flight = true,
            Act::AutoDedup => self.auto_dedup = true,
            Act::ManageCgroups => {
                self.manage_cgroups = Some(cg_mode(value.as_deref()).ok_or_else(|| bad(&val()))?);
            }
            Act::GhostLimit => self.ghost_limit = Some(parse_size(&val()).ok_or_else(|| bad(&val()))?),
            Act::FreezeCgroup => self.freeze_cgroup = Some(val()),
            Act::Root => self.root = Some(val()),
            Act::External => {
                let v = val();
                match v.strip_prefix("mnt[").and_then(|r| r.split_once("]:")) {
                    Some((k, name)) => self.ext_mnt.push((k.to_string(), name.to_string())),
                    None if v.starts_with("net[") && v.contains("]:") => self.external.push(v),
                    None => return Err(bad(&v)),
                }
            }
            Act::ExtMountMap => {
                let v = val();
                let (k, name) = v.split_once(':').ok_or_else(|| bad(&v))?;
                self.ext_mnt.push((k.to_string(), name.to_string()));
            }
            Act::InheritFd => {
                let v = val();
                let (n, key) = v
                    .strip_prefix("fd[")
                    .and_then(|r| r.split_once("]:"))
                    .and_then(|(n, k)| Some((n.parse::<i32>().ok()?, k)))
                    .ok_or_else(|| bad(&v))?;
                self.inherit_fd.push((key.to_string(), n));
            }
            Act::TrackMem => self.track_mem = true,
            Act::PrevImagesDir => self.prev_images_dir = Some(val().into()),
            Act::PageServer => self.page_server = true,
            Act::Address => self.address = Some(val()),
            Act::Port => self.port = Some(val().parse().map_err(|_| bad(&val()))?),
            Act::LazyPages => self.lazy_pages = true,
            Act::VethPair => {
                let v = val();
                match v.split_once('=') {
                    Some((i, o)) if !i.is_empty() && !o.is_empty() && !o.contains('@') => {
                        self.veth_pairs.push((i.to_string(), o.to_string()))
                    }
                    _ => return Err(bad(&v)),
                }
            }
            Act::EmptyNs => {
                // CRIU takes a comma list; only the network namespace can
                // be left empty.
                for n in val().split(',') {
                    match n {
                        "net" => self.empty_ns_net = true,
                        _ => {
                            return Err(CliError::Unsupported {
                                opt: format!("{shown} {n}"),
                                why: "only the network namespace can be restored empty",
                            })
                        }
                    }
                }
            }
            Act::Feature => self.features.push(val()),
            Act::Config => self.config = Some(val().into()),
            Act::NoDefaultConfig => self.no_default_config = true,
            Act::Version => self.version = true,
            Act::Help => self.help = true,
            Act::Ignored => self.ignored.push(match value {
                Some(v) => format!("{shown}={v}"),
                None => shown.to_string(),
            }),
            Act::Refused(why) => {
                return Err(CliError::Unsupported {
                    opt: shown.to_string(),
                    why,
                })
            }
        }
        Ok(())
    }
}

/// Parses a CRIU command line (without argv[0]).
pub fn parse(args: &[String]) -> Result<Options, CliError> {
    let mut o = Options::default();
    parse_into(&mut o, args)?;
    Ok(o)
}

fn parse_into(o: &mut Options, args: &[String]) -> Result<(), CliError> {
    let mut i = 0;
    let mut only_operands = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_operands || a == "-" || !a.starts_with('-') {
            if o.command.is_none() {
                o.command = Some(a.clone());
            } else {
                o.operands.push(a.clone());
            }
            continue;
        }
        if a == "--" {
            only_operands = true;
            continue;
        }
        if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let shown = format!("--{name}");
            let spec = find_long(name).ok_or_else(|| CliError::Unknown { opt: shown.clone() })?;
            let value = match (spec.arg, inline) {
                (Arg::No, Some(v)) => return Err(CliError::UnexpectedArg { opt: shown, value: v }),
                (Arg::No, None) | (Arg::Optional, None) => None,
                (_, Some(v)) => Some(v),
                (Arg::Required, None) => {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| CliError::MissingArg { opt: shown.clone() })?;
                    i += 1;
                    Some(v)
                }
            };
            o.apply(spec, &shown, value)?;
            continue;
        }
        // Short options, possibly clustered (-jR) or with an attached value (-t123, -v4).
        let chars: Vec<char> = a[1..].chars().collect();
        let mut k = 0;
        while k < chars.len() {
            let c = chars[k];
            k += 1;
            let shown = format!("-{c}");
            let spec = find_short(c).ok_or_else(|| CliError::Unknown { opt: shown.clone() })?;
            let rest: String = chars[k..].iter().collect();
            let value = match spec.arg {
                Arg::No => None,
                Arg::Optional if rest.is_empty() => None,
                Arg::Optional | Arg::Required if !rest.is_empty() => {
                    k = chars.len();
                    Some(rest)
                }
                _ => {
                    let v = args
                        .get(i)
                        .cloned()
                        .ok_or_else(|| CliError::MissingArg { opt: shown.clone() })?;
                    i += 1;
                    Some(v)
                }
            };
            o.apply(spec, &shown, value)?;
        }
    }
    Ok(())
}

/// Turns a configuration file's text into long options: one option per
/// line without the leading dashes, its value after whitespace; `#`
/// starts a comment.
fn config_args(text: &str, path: &str) -> Result<Vec<String>, CliError> {
    let mut args = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k, Some(v.trim().trim_matches('"'))),
            None => (line, None),
        };
        if name.starts_with('-') {
            return Err(CliError::BadConfigLine {
                path: path.to_string(),
                line: n + 1,
                text: line.to_string(),
            });
        }
        args.push(match value {
            Some(v) => format!("--{name}={v}"),
            None => format!("--{name}"),
        });
    }
    Ok(args)
}

/// Parses a configuration file's text (see [`config_args`]).
pub fn parse_config(text: &str, path: &str) -> Result<Options, CliError> {
    parse(&config_args(text, path)?)
}

/// Reads a configuration file; a missing file is not an error.
pub fn load_config(path: &Path) -> Result<Option<Options>> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(parse_config(&t, &path.display().to_string())?)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("Cannot read configuration file {}", path.display())),
    }
}

/// Applies what a configuration file sets onto RPC options (the file wins,
/// as with CRIU). The log file is returned separately by the caller.
pub fn apply_to_rpc(c: &Options, o: &mut CriuOpts) {
    let set = |f: &mut Option<bool>, v: bool| {
        if v {
            *f = Some(true);
        }
    };
    set(&mut o.tcp_established, c.tcp_established);
    set(&mut o.ext_unix_sk, c.ext_unix_sk);
    set(&mut o.file_locks, c.file_locks);
    set(&mut o.evasive_devices, c.evasive_devices);
    set(&mut o.link_remap, c.link_remap);
    set(&mut o.tcp_close, c.tcp_close);
    set(&mut o.tcp_skip_in_flight, c.skip_in_flight);
    set(&mut o.auto_dedup, c.auto_dedup);
    set(&mut o.shell_job, c.shell_job);
    set(&mut o.leave_running, c.leave_running);
    if let Some(v) = c.verbosity {
        o.log_level = Some(v as i32);
    }
    if let Some(m) = c.manage_cgroups {
        o.manage_cgroups_mode = Some(m as i32);
    }
    if let Some(g) = c.ghost_limit {
        o.ghost_limit = Some(g);
    }
    if let Some(r) = &c.root {
        o.root = Some(r.clone());
    }
    if let Some(f) = &c.freeze_cgroup {
        o.freeze_cgroup = Some(f.clone());
    }
}

/// `criu ...` (argv without argv[0]); returns the exit code.
pub fn main_with(args: &[String]) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            eprintln!("Error: {msg}");
            1
        }
    }
}

/// Entry point when the binary is called `criu`.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    main_with(&args)
}

const USAGE: &str = "\
Usage (cryo speaking CRIU's dialect):
  criu dump -t PID -D DIR [-W DIR] [-o LOG] [-v[N]] [--shell-job] [--leave-running] [--tcp-established] ...
  criu restore -D DIR [-W DIR] [-o LOG] [-v[N]] [-d] [--pidfile FILE] [--shell-job] [--lazy-pages] ...
  criu pre-dump -t PID -D DIR [--prev-images-dir PREV] [--track-mem]
  criu dump -t PID -D DIR --prev-images-dir PREV ...    (after pre-dumps)
  criu dump -t PID -D DIR --page-server --address HOST --port PORT
  criu page-server -D DIR --port PORT [--address ADDR]  (cryo's page server protocol)
  criu check [--feature NAME]
  criu swrk FD
  criu --version
";

/// The version text of `criu --version`.
pub fn version_text() -> String {
    format!("Version: {}.{}.{}\n", CRIU_VERSION.0, CRIU_VERSION.1, CRIU_VERSION.2)
}

fn run(args: &[String]) -> Result<i32> {
    // `swrk <fd>` before anything else: its argument is not an option.
    if args.first().map(String::as_str) == Some("swrk") {
        if args.len() != 2 {
            bail!("Usage: criu swrk <fd>");
        }
        return Ok(crate::rpc::swrk_main(&args[1]));
    }
    let mut o = parse(args)?;
    if o.version {
        print!("{}", version_text());
        return Ok(0);
    }
    if o.help {
        print!("{USAGE}");
        return Ok(0);
    }
    // Configuration: /etc/criu/default.conf, then --config; the command
    // line wins over both.
    if !o.no_default_config || o.config.is_some() {
        let mut files = Vec::new();
        if !o.no_default_config {
            files.push(PathBuf::from("/etc/criu/default.conf"));
        }
        if let Some(c) = &o.config {
            files.push(c.clone());
        }
        let mut merged = Options::default();
        for f in files {
            let text = match fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound && Some(&f) != o.config.as_ref() => continue,
                Err(e) => return Err(e).with_context(|| format!("Cannot read configuration file {}", f.display())),
            };
            parse_into(&mut merged, &config_args(&text, &f.display().to_string())?)?;
        }
        parse_into(&mut merged, args)?;
        o = merged;
    }
    let cmd = o.command.clone().unwrap_or_default();
    match cmd.as_str() {
        "" => {
            eprint!("{USAGE}");
            Ok(1)
        }
        "check" => cmd_check(&o),
        "dump" => cmd_dump(&o),
        "restore" => cmd_restore(&o),
        "pre-dump" => cmd_pre_dump(&o),
        "page-server" => cmd_page_server(&o),
        "lazy-pages" => bail!(
            "Command lazy-pages is not supported by cryo: there is no lazy-pages daemon; \
             `criu restore --lazy-pages` serves the pages of the parent (pre-dump) images itself"
        ),
        "service" | "exec" | "cpuinfo" | "image-streamer" | "show" => {
            bail!("Command {cmd} is not supported by cryo")
        }
        other => bail!("Unknown command {other:?}\n{USAGE}"),
    }
}

/// The log file: relative names go into the work directory (which
/// defaults to the images directory), as with CRIU. Without -o nothing is
/// logged unless -v was given (then stderr).
fn log_path(o: &Options) -> Option<PathBuf> {
    let f = o.log_file.as_ref()?;
    if f.as_os_str() == "-" {
        return None;
    }
    if f.is_relative() {
        if let Some(d) = o.work_dir.as_ref().or(o.images_dir.as_ref()) {
            return Some(d.join(f));
        }
    }
    Some(f.clone())
}

fn log_ignored(o: &Options) {
    for i in &o.ignored {
        tracing::info!("option {i} accepted with no effect");
    }
    if o.file_locks {
        tracing::warn!("--file-locks accepted; file locks are not dumped yet");
    }
}

/// Features `criu check --feature` knows, and whether cryo has them on
/// this kernel (the engine's own uses are probed, not assumed).
fn feature(name: &str) -> Option<bool> {
    use crate::sys::probe;
    Some(match name {
        // Pre-dump write tracking: uffd async write-protect + PAGEMAP_SCAN.
        "mem_dirty_track" => probe::uffd_wp_async(),
        // Lazy restore: a userfaultfd taken from the restored task, with
        // the fork/remap/remove/unmap events it follows.
        "uffd" | "lazy_pages" | "uffd-noncoop" => probe::uffd_missing(),
        // `--external net[INO]:KEY` and inherit_fd of that key.
        "external_net_ns" => true,
        "cgroupns" => std::path::Path::new("/proc/self/ns/cgroup").exists(),
        "pidfd_store" | "ns_pid" | "ns_get_userns" | "ns_get_parent" | "timens" => false,
        "compat_cr"
        | "autofs"
        | "tun"
        | "stream_unix"
        | "nsid"
        | "link_nsid"
        | "sk_unix_file"
        | "sk_ns"
        | "mnt_id"
        | "loginuid"
        | "move_mount_set_group"
        | "openat2"
        | "get_rseq_conf"
        | "newifindex"
        | "fdinfo_lock"
        | "seccomp_suspend"
        | "seccomp_filters"
        | "memfd_hugetlb" => false,
        "clone3_set_tid" | "rseq" | "ptrace_get_rseq_conf" | "tcp_half_closed" | "network_lock_nftables" => true,
        _ => return None,
    })
}

fn cmd_check(o: &Options) -> Result<i32> {
    log::init(log_path(o).as_deref(), o.verbosity)?;
    if !o.features.is_empty() {
        let mut all = true;
        for f in &o.features {
            match feature(f) {
                Some(true) => println!("{f} is supported"),
                Some(false) => {
                    all = false;
                    println!("{f} is not supported");
                }
                None => bail!("Unknown feature {f}"),
            }
        }
        return Ok(if all { 0 } else { 1 });
    }
    let missing = kerndat::check();
    if missing.is_empty() {
        println!("Looks good.");
        Ok(0)
    } else {
        for m in &missing {
            eprintln!("Error: missing {m}");
        }
        Ok(1)
    }
}

/// `--address A --port P` as HOST:PORT (CRIU's default address is any).
fn page_server_addr(o: &Options, default_host: &str) -> Result<String> {
    let port = o.port.context("the page server needs --port PORT")?;
    let host = o.address.as_deref().unwrap_or(default_host);
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn cmd_pre_dump(o: &Options) -> Result<i32> {
    let pid = o.tree.context("pre-dump needs the tree's root: -t PID")?;
    let dir = o
        .images_dir
        .clone()
        .context("pre-dump needs an images directory: -D DIR")?;
    if o.page_server || o.lazy_pages || o.leave_running {
        bail!("pre-dump takes no --page-server / --lazy-pages / --leave-running (the tree always keeps running)");
    }
    fs::create_dir_all(&dir).with_context(|| format!("Cannot create {}", dir.display()))?;
    log::init(log_path(o).as_deref(), o.verbosity)?;
    log_ignored(o);
    let b = crate::migrate::predump::pre_dump(pid, &dir, o.prev_images_dir.as_deref())?;
    tracing::info!("pre-dump: {} KiB copied", b >> 10);
    Ok(0)
}

fn cmd_page_server(o: &Options) -> Result<i32> {
    let dir = o
        .images_dir
        .clone()
        .context("page-server needs an images directory: -D DIR")?;
    let listen = page_server_addr(o, "0.0.0.0")?;
    log::init(log_path(o).as_deref(), o.verbosity)?;
    log_ignored(o);
    crate::migrate::server::serve(&crate::migrate::server::ServerOpts {
        listen,
        dir,
        pidfile: o.pidfile.clone(),
        container: None,
    })?;
    Ok(0)
}

fn cmd_dump(o: &Options) -> Result<i32> {
    let pid = o.tree.context("dump needs the tree's root: -t PID")?;
    let dir = o.images_dir.clone().context("dump needs an images directory: -D DIR")?;
    if o.lazy_pages {
        bail!(
            "dump --lazy-pages is not supported by cryo (no lazy-pages daemon): pre-dump, dump with \
             --prev-images-dir, then restore --lazy-pages"
        );
    }
    crate::image::ImageDir::create(&dir)?;
    if let Some(w) = &o.work_dir {
        fs::create_dir_all(w).with_context(|| format!("Cannot create work directory {}", w.display()))?;
    }
    log::init(log_path(o).as_deref(), o.verbosity)?;
    log_ignored(o);
    if let Some(cg) = &o.freeze_cgroup {
        tracing::warn!("--freeze-cgroup {cg} accepted; cryo freezes with ptrace");
    }
    if o.empty_ns_net {
        tracing::warn!("--empty-ns net accepted; a network namespace of the tree's own is dumped all the same");
    }
    if o.page_server {
        if o.prev_images_dir.is_some() || o.leave_running {
            bail!("dump --page-server sends a whole, final dump: no --prev-images-dir or --leave-running");
        }
        return crate::migrate::cli::dump_to(pid, &page_server_addr(o, "127.0.0.1")?, o.shell_job);
    }
    let opts = dump::DumpOpts {
        pid,
        dir: dir.clone(),
        shell_job: o.shell_job,
        leave_running: o.leave_running,
        tcp_established: o.tcp_established,
        tcp_close: o.tcp_close,
        ext_mnt: o.ext_mnt.clone(),
        external: o.external.clone(),
        hook: Default::default(),
        ..Default::default()
    };
    let st = match &o.prev_images_dir {
        Some(p) => crate::migrate::predump::dump_after(opts, p)?,
        None => dump::dump(&opts)?,
    };
    tracing::info!("dumped {} processes, {} pages", st.processes, st.pages_written);
    if let Some(w) = &o.work_dir {
        let _ = fs::copy(dir.join("stats-dump"), w.join("stats-dump"));
    }
    Ok(0)
}

fn cmd_restore(o: &Options) -> Result<i32> {
    let dir = o
        .images_dir
        .clone()
        .context("restore needs an images directory: -D DIR")?;
    let root = o
        .root
        .as_ref()
        .filter(|r| Path::new(r) != Path::new("/"))
        .map(PathBuf::from);
    log::init(log_path(o).as_deref(), o.verbosity)?;
    log_ignored(o);
    let opts = restore::RestoreOpts {
        skip_file_check: false,
        tcp_close: o.tcp_close,
        veth_pairs: o.veth_pairs.clone(),
        dir: dir.clone(),
        shell_job: o.shell_job,
        detach: o.detach,
        pidfile: o.pidfile.clone(),
        trust_images: false,
        root,
        ext_mnt: o.ext_mnt.clone(),
        inherit_fd: o.inherit_fd.clone(),
        hook: Default::default(),
        ..Default::default()
    };
    if o.lazy_pages {
        let container = fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("mountpoints-"))
            })
            .unwrap_or(false);
        if container {
            bail!(
                "restore --lazy-pages of a container (images with a mount namespace) is not supported yet: \
                 restore it without --lazy-pages"
            );
        }
        // Returns once every page is in; the tree runs detached meanwhile.
        return crate::migrate::lazy::restore_lazy(opts);
    }
    let r = restore::restore(&opts)?;
    if let Some(w) = &o.work_dir {
        let _ = fs::copy(dir.join("stats-restore"), w.join("stats-restore"));
    }
    Ok(r.exit_code.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Options, CliError> {
        let v: Vec<String> = s.split_whitespace().map(String::from).collect();
        parse(&v)
    }

    #[test]
    fn dump_line_as_runc_tests_and_users_write_it() {
        let o =
            p("dump -t 42 -D /img -o dump.log -v4 --shell-job --leave-running --tcp-established --file-locks").unwrap();
        assert_eq!(o.command.as_deref(), Some("dump"));
        assert_eq!(o.tree, Some(42));
        assert_eq!(o.images_dir.as_deref(), Some(Path::new("/img")));
        assert_eq!(o.log_file.as_deref(), Some(Path::new("dump.log")));
        assert_eq!(o.verbosity, Some(4));
        assert!(o.shell_job && o.leave_running && o.tcp_established && o.file_locks);
    }

    #[test]
    fn getopt_forms() {
        let o =
            p("restore --images-dir=/i -d --pidfile /p -jR -t7 -vvv --manage-cgroups=full --ghost-limit 2M").unwrap();
        assert_eq!(o.images_dir.as_deref(), Some(Path::new("/i")));
        assert!(o.detach && o.shell_job && o.leave_running);
        assert_eq!(o.tree, Some(7));
        assert_eq!(o.verbosity, Some(4));
        assert_eq!(o.manage_cgroups, Some(CriuCgMode::Full));
        assert_eq!(o.ghost_limit, Some(2 << 20));
        assert_eq!(p("dump -v -v").unwrap().verbosity, Some(4));
        assert_eq!(p("dump -v").unwrap().verbosity, Some(3));
        assert_eq!(p("dump -v2").unwrap().verbosity, Some(2));
        assert_eq!(
            p("dump --manage-cgroups").unwrap().manage_cgroups,
            Some(CriuCgMode::Soft)
        );
        assert!(p("--version").unwrap().version);
        assert!(p("-V").unwrap().version);
        let o = p("swrk 3").unwrap();
        assert_eq!(
            (o.command.as_deref(), o.operands.as_slice()),
            (Some("swrk"), &["3".to_string()][..])
        );
    }

    #[test]
    fn harmless_options_are_recorded() {
        let o = p("dump -t 1 -D d --display-stats --timeout 10 --log-pid --cpu-cap=all").unwrap();
        assert_eq!(
            o.ignored,
            vec!["--display-stats", "--timeout=10", "--log-pid", "--cpu-cap=all"]
        );
    }

    #[test]
    fn refusals_and_mistakes() {
        assert!(matches!(p("dump --tls"), Err(CliError::Unsupported { ref opt, .. }) if opt == "--tls"));
        assert!(matches!(
            p("restore --inherit-fd 1:pipe"),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(p("restore --external foo"), Err(CliError::BadValue { .. })));
        let o = p(
            "restore --inherit-fd fd[1]:pipe:[7] --external mnt[/data]:/srv -M /x:/y --external net[5]:extRootNetNS",
        )
        .unwrap();
        assert_eq!(o.inherit_fd, vec![("pipe:[7]".to_string(), 1)]);
        assert_eq!(
            o.ext_mnt,
            vec![
                ("/data".to_string(), "/srv".to_string()),
                ("/x".to_string(), "/y".to_string())
            ]
        );
        assert_eq!(o.external, vec!["net[5]:extRootNetNS".to_string()]);
        assert!(matches!(p("restore -S"), Err(CliError::Unsupported { ref opt, .. }) if opt == "-S"));
        assert_eq!(
            p("dump --no-such"),
            Err(CliError::Unknown {
                opt: "--no-such".into()
            })
        );
        assert_eq!(p("dump -t"), Err(CliError::MissingArg { opt: "-t".into() }));
        assert_eq!(
            p("dump -t abc"),
            Err(CliError::BadValue {
                opt: "-t".into(),
                value: "abc".into()
            })
        );
        assert!(matches!(p("dump --shell-job=1"), Err(CliError::UnexpectedArg { .. })));
        assert!(matches!(
            p("dump --manage-cgroups=weird"),
            Err(CliError::BadValue { .. })
        ));
        let e = p("restore --status-fd 5").unwrap_err().to_string();
        assert!(e.starts_with("Option --status-fd is not supported by cryo ("), "{e}");
        let e = p("restore --empty-ns net,pid").unwrap_err().to_string();
        assert!(e.starts_with("Option --empty-ns pid is not supported by cryo ("), "{e}");
        assert!(matches!(p("restore --veth-pair eth0"), Err(CliError::BadValue { .. })));
        assert!(matches!(
            p("restore --veth-pair eth0=v@br0"),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(p("dump --port x"), Err(CliError::BadValue { .. })));
    }

    #[test]
    fn migration_and_network_options() {
        let o = p("pre-dump -t 9 -D /i/2 --prev-images-dir ../1 --track-mem").unwrap();
        assert_eq!(o.command.as_deref(), Some("pre-dump"));
        assert_eq!(o.prev_images_dir.as_deref(), Some(Path::new("../1")));
        assert!(o.track_mem);
        let o =
            p("dump -t 9 -D d --page-server --address 10.0.0.2 --port 27277 --tcp-established --tcp-close").unwrap();
        assert!(o.page_server && o.tcp_established && o.tcp_close);
        assert_eq!(page_server_addr(&o, "x").unwrap(), "10.0.0.2:27277");
        let o = p("page-server -D d --port 1234 --address ::1").unwrap();
        assert_eq!(page_server_addr(&o, "0.0.0.0").unwrap(), "[::1]:1234");
        assert!(page_server_addr(&p("page-server -D d").unwrap(), "h").is_err());
        let o = p("restore -D d --lazy-pages --veth-pair eth0=veth9 --veth-pair eth1=v2 --empty-ns net").unwrap();
        assert!(o.lazy_pages && o.empty_ns_net);
        assert_eq!(
            o.veth_pairs,
            vec![
                ("eth0".to_string(), "veth9".to_string()),
                ("eth1".to_string(), "v2".to_string())
            ]
        );
    }

    #[test]
    fn config_files() {
        let c = parse_config(
            "# runc.conf\ntcp-established\n\nlog-file /var/log/criu.log  # abs\nghost-limit 1K\nskip-in-flight\n",
            "runc.conf",
        )
        .unwrap();
        assert!(c.tcp_established && c.skip_in_flight);
        assert_eq!(c.log_file.as_deref(), Some(Path::new("/var/log/criu.log")));
        assert_eq!(c.ghost_limit, Some(1024));
        let mut o = CriuOpts::default();
        apply_to_rpc(&c, &mut o);
        assert!(o.tcp_established() && o.tcp_skip_in_flight());
        assert_eq!(o.ghost_limit(), 1024);
        assert!(!o.file_locks());
        assert!(matches!(
            parse_config("--tcp-established\n", "x"),
            Err(CliError::BadConfigLine { line: 1, .. })
        ));
        assert!(matches!(parse_config("tls\n", "x"), Err(CliError::Unsupported { .. })));
        assert!(load_config(Path::new("/nonexistent/criu.conf")).unwrap().is_none());
    }

    #[test]
    fn version_text_is_criu_shaped() {
        assert_eq!(version_text(), "Version: 3.17.1\n");
    }
}

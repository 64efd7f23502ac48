//! Tests of the image layer that span several files (framing + dir +
//! show + crit interop). Module-local tests live next to their code.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use prost::Message;

use super::pages::new_entry;
use super::pb::*;
use super::*;

fn ids(vm: u32, files: u32) -> TaskKobjIdsEntry {
    TaskKobjIdsEntry {
        vm_id: vm,
        files_id: files,
        fs_id: vm,
        sighand_id: vm,
        pid_ns_id: Some(1),
        net_ns_id: Some(2),
        ipc_ns_id: Some(3),
        uts_ns_id: Some(4),
        mnt_ns_id: Some(6),
        user_ns_id: Some(7),
        cgroup_ns_id: Some(8),
        time_ns_id: Some(5),
    }
}

fn fown() -> FownEntry {
    FownEntry::default()
}

fn creds() -> CredsEntry {
    CredsEntry {
        cap_inh: vec![0, 0],
        cap_prm: vec![0xff00_00ff, 0x1ff],
        cap_eff: vec![0xff00_00ff, 0x1ff],
        cap_bnd: vec![0xff00_00ff, 0x1ff],
        cap_amb: vec![0, 0],
        ..Default::default()
    }
}

fn sample_core(tid: u32, leader: bool) -> CoreEntry {
    let gpregs = UserX86RegsEntry {
        ip: 0x7f00_0000_1234,
        sp: 0x7ffe_0000_1000,
        orig_ax: 0x3d,
        ax: 0x3d,
        cs: 0x33,
        ss: 0x2b,
        flags: 0x202,
        fs_base: 0x7f00_0000_0740,
        mode: Some(UserX86RegsMode::Native as i32),
        ..Default::default()
    };
    let fpregs = UserX86FpregsEntry {
        cwd: 0x37f,
        mxcsr: 0x1f80,
        mxcsr_mask: 0x2ffff,
        st_space: vec![0; 32],
        xmm_space: vec![7; 64],
        xsave: Some(UserX86XsaveEntry {
            xstate_bv: 0xa2,
            ymmh_space: vec![0; 64],
            ..Default::default()
        }),
        ..Default::default()
    };
    let tls = (12..15)
        .map(|n| UserDescT {
            entry_number: n,
            ..Default::default()
        })
        .collect();
    let tc = leader.then(|| TaskCoreEntry {
        task_state: 1,
        flags: 0x40_0000,
        blk_sigset: 0x1_0000,
        comm: "sleeper".into(),
        timers: Some(TaskTimersEntry::default()),
        rlimits: Some(TaskRlimitsEntry {
            rlimits: vec![
                RlimitEntry {
                    cur: u64::MAX,
                    max: u64::MAX
                };
                16
            ],
        }),
        signals_s: Some(SignalQueueEntry::default()),
        loginuid: Some(u32::MAX),
        oom_score_adj: Some(0),
        sigactions: vec![
            SaEntry {
                flags: 0x400_0000,
                compat_sigaction: Some(false),
                ..Default::default()
            };
            62
        ],
        child_subreaper: Some(false),
        ..Default::default()
    });
    CoreEntry {
        mtype: core_entry::March::X8664 as i32,
        thread_info: Some(ThreadInfoX86 {
            clear_tid_addr: 0x7f00_0000_0a10,
            gpregs,
            fpregs,
            tls,
        }),
        tc,
        ids: None,
        thread_core: Some(ThreadCoreEntry {
            futex_rla: 0x7f00_0000_0a20,
            futex_rla_len: 24,
            sched_nice: Some(0),
            sched_policy: Some(0),
            blk_sigset: (!leader).then_some(0),
            sas: Some(ThreadSasEntry {
                ss_sp: 0,
                ss_size: 0,
                ss_flags: 2,
            }),
            signals_p: Some(SignalQueueEntry {
                signals: vec![SiginfoEntry { siginfo: vec![10; 128] }],
            }),
            creds: Some(creds()),
            comm: Some(format!("t{tid}")),
            rseq_entry: Some(RseqEntry {
                rseq_abi_pointer: 0x7f00_0000_0b00,
                rseq_abi_size: 32,
                signature: 0x5305_3053,
                rseq_cs_pointer: None,
            }),
            cg_set: Some(1),
            ..Default::default()
        }),
    }
}

fn sample_mm() -> MmEntry {
    MmEntry {
        mm_start_code: 0x40_0000,
        mm_end_code: 0x40_1000,
        mm_start_brk: 0x60_0000,
        mm_brk: 0x60_2000,
        exe_file_id: 1,
        mm_saved_auxv: vec![6, 4096, 0, 0],
        vmas: vec![
            VmaEntry {
                start: 0x40_0000,
                end: 0x40_1000,
                pgoff: 0,
                shmid: 1,
                prot: 5,
                flags: 2,
                status: 0x41,
                fd: -1,
                madv: None,
                fdflags: Some(0),
                cryo_lock_onfault: None,
                cryo_guards: vec![],
            },
            VmaEntry {
                start: 0x60_0000,
                end: 0x60_2000,
                pgoff: 0,
                shmid: 0,
                prot: 3,
                flags: 0x22,
                status: 0x221,
                fd: -1,
                madv: None,
                fdflags: None,
                cryo_lock_onfault: None,
                cryo_guards: vec![],
            },
        ],
        dumpable: Some(1),
        thp_disabled: Some(false),
        cryo_vdso_size: Some(8192),
        cryo_vdso_hash: Some(fnv1a64(b"vdso")),
        cryo_vvar_start: Some(0x7fff_0000_0000),
        ..Default::default()
    }
}

fn reg(id: u32, name: &str, flags: u32) -> FileEntry {
    FileEntry {
        r#type: FdTypes::Reg as i32,
        id,
        reg: Some(RegFileEntry {
            id,
            flags,
            pos: 0,
            fown: fown(),
            name: name.into(),
            size: Some(0),
            mode: Some(0o100644),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn termios() -> TermiosEntry {
    let mut c_cc = vec![0u32; 19];
    c_cc[0] = u32::from_le_bytes([0x03, 0x1c, 0x7f, 0x15]);
    TermiosEntry {
        c_iflag: 0x500,
        c_oflag: 5,
        c_cflag: 0xbf,
        c_lflag: 0x8a3b,
        c_cc,
        ..Default::default()
    }
}

/// Writes a small but complete image directory for pid 100 (threads 100
/// and 101), with one pages file of 3 pages, a pipe with data and a pty.
fn write_sample(dir: &ImageDir) {
    dir.write_image(names::INVENTORY, Kind::Inventory, &[new_inventory(ids(1, 1))])
        .unwrap();
    dir.write_image(
        names::PSTREE,
        Kind::Pstree,
        &[PstreeEntry {
            pid: 100,
            ppid: 0,
            pgid: 100,
            sid: 100,
            threads: vec![100, 101],
        }],
    )
    .unwrap();
    dir.write_image(&names::core(100), Kind::Core, &[sample_core(100, true)])
        .unwrap();
    dir.write_image(&names::core(101), Kind::Core, &[sample_core(101, false)])
        .unwrap();
    dir.write_image(&names::ids(100), Kind::Ids, &[ids(2, 2)]).unwrap();
    dir.write_image(&names::mm(100), Kind::Mm, &[sample_mm()]).unwrap();
    dir.write_pagemap(
        &names::pagemap(100),
        &PagemapHead { pages_id: 1 },
        &[
            new_entry(0x40_0000, 1, PE_PRESENT),
            new_entry(0x60_0000, 2, PE_PRESENT | PE_LAZY),
        ],
    )
    .unwrap();
    let mut pages = dir.create_raw(&names::pages(1)).unwrap();
    pages.write_all(&vec![0xab; 3 * 4096]).unwrap();
    dir.write_image(
        &names::fs(100),
        Kind::Fs,
        &[FsEntry {
            cwd_id: 5,
            root_id: 6,
            umask: Some(0o22),
        }],
    )
    .unwrap();
    let files = vec![
        reg(1, "/usr/bin/sleeper", 0),
        reg(2, "/tmp/data.txt", 0x8402),
        FileEntry {
            r#type: FdTypes::Pipe as i32,
            id: 3,
            pipe: Some(PipeEntry {
                id: 3,
                pipe_id: 4242,
                flags: 0,
                fown: fown(),
            }),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Tty as i32,
            id: 4,
            tty: Some(TtyFileEntry {
                id: 4,
                tty_info_id: 0,
                flags: 2,
                fown: fown(),
                regf_id: Some(7),
            }),
            ..Default::default()
        },
        reg(5, "/tmp", 0),
        reg(6, "/", 0),
        reg(7, "/dev/pts/0", 2),
    ];
    dir.write_image(names::FILES, Kind::Files, &files).unwrap();
    let fdinfo: Vec<FdinfoEntry> = [(4, FdTypes::Tty, 0), (2, FdTypes::Reg, 1), (3, FdTypes::Pipe, 3)]
        .into_iter()
        .map(|(id, t, fd)| FdinfoEntry {
            id,
            flags: 0,
            r#type: t as i32,
            fd,
            xattr_security_selinux: None,
        })
        .collect();
    dir.write_image(&names::fdinfo(2), Kind::Fdinfo, &fdinfo).unwrap();
    dir.write_pipes_data(
        names::PIPES_DATA,
        &[(
            PipeDataEntry {
                pipe_id: 4242,
                bytes: 0,
                size: Some(65536),
            },
            b"hello-pipe".as_slice(),
        )],
    )
    .unwrap();
    dir.write_image(
        names::TTY_INFO,
        Kind::TtyInfo,
        &[TtyInfoEntry {
            id: 0,
            r#type: TtyType::Pty as i32,
            sid: 100,
            pgrp: 100,
            rdev: 0x8800,
            termios: Some(termios()),
            termios_locked: Some(termios()),
            winsize: Some(WinsizeEntry {
                ws_row: 24,
                ws_col: 80,
                ..Default::default()
            }),
            pty: Some(TtyPtyEntry { index: 0 }),
            dev: Some(26),
            uid: Some(0),
            gid: Some(5),
            ..Default::default()
        }],
    )
    .unwrap();
    dir.write_image(names::SECCOMP, Kind::Seccomp, &[SeccompEntry::default()])
        .unwrap();
    dir.write_image(
        &names::timens(0),
        Kind::Timens,
        &[TimensEntry {
            monotonic: Timespec {
                tv_sec: 2857,
                tv_nsec: 647_488_171,
            },
            boottime: Timespec {
                tv_sec: 2900,
                tv_nsec: 1,
            },
        }],
    )
    .unwrap();
    dir.write_image(
        names::STATS_DUMP,
        Kind::Stats,
        &[StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: 184,
                pages_written: 3,
                ..Default::default()
            }),
            restore: None,
        }],
    )
    .unwrap();
    dir.finish_manifest().unwrap();
}

fn sample_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("img");
    let dir = ImageDir::create(&p).unwrap();
    write_sample(&dir);
    (t, p)
}

// ---------------------------------------------------------------- framing

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(kind: Kind, msgs: &[M]) {
    let mut w = ImageWriter::new(kind);
    for m in msgs {
        w.write_entry(m).unwrap();
    }
    let bytes = w.into_bytes();
    let mut r = ImageReader::new("x.img", &bytes, kind).unwrap();
    let back: Vec<M> = r.read_all().unwrap();
    assert_eq!(back, msgs, "{kind}");
    // Detection by magic finds the same kind.
    assert_eq!(ImageReader::detect("x.img", &bytes).unwrap().kind(), kind);
}

#[test]
fn every_kind_round_trips() {
    round_trip(Kind::Inventory, &[new_inventory(ids(1, 1))]);
    round_trip(
        Kind::Pstree,
        &[
            PstreeEntry {
                pid: 1,
                threads: vec![1, 2],
                ..Default::default()
            },
            PstreeEntry {
                pid: 3,
                ppid: 1,
                threads: vec![3],
                ..Default::default()
            },
        ],
    );
    round_trip(Kind::Core, &[sample_core(7, true)]);
    round_trip(Kind::Core, &[sample_core(8, false)]);
    round_trip(Kind::Ids, &[ids(2, 3)]);
    round_trip(Kind::Mm, &[sample_mm()]);
    round_trip(Kind::Pagemap, &[new_entry(0x1000, 1, PE_PRESENT)]);
    round_trip(Kind::Fdinfo, &[FdinfoEntry::default()]);
    round_trip(Kind::Files, &[reg(1, "/x", 0)]);
    round_trip(Kind::Fs, &[FsEntry::default()]);
    round_trip(Kind::PipesData, &[PipeDataEntry::default()]);
    round_trip(Kind::TtyInfo, &[TtyInfoEntry::default()]);
    round_trip(
        Kind::TtyData,
        &[TtyDataEntry {
            tty_id: 1,
            data: b"abc".to_vec(),
        }],
    );
    round_trip(
        Kind::Seccomp,
        &[SeccompEntry {
            seccomp_filters: vec![SeccompFilter {
                filter: vec![1; 16],
                prev: None,
                flags: Some(0),
            }],
        }],
    );
    round_trip(Kind::Timens, &[TimensEntry::default()]);
    round_trip(Kind::Stats, &[StatsEntry::default()]);
    round_trip::<PstreeEntry>(Kind::Pstree, &[]);
}

#[test]
fn wire_bytes_match_criu() {
    // image-format.md §5.6: pstree entry and pagemap entry bytes.
    let mut w = ImageWriter::new(Kind::Pstree);
    w.write_entry(&PstreeEntry {
        pid: 16537,
        ppid: 0,
        pgid: 16537,
        sid: 16537,
        threads: vec![16537],
    })
    .unwrap();
    assert_eq!(
        w.bytes(),
        [
            0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50, 0x12, 0, 0, 0, 0x08, 0x99, 0x81, 0x01, 0x10, 0x00, 0x18,
            0x99, 0x81, 0x01, 0x20, 0x99, 0x81, 0x01, 0x28, 0x99, 0x81, 0x01
        ]
    );
    let e = new_entry(0x5573_e118_a000, 1, PE_PRESENT);
    assert_eq!(
        e.encode_to_vec(),
        [0x08, 0x80, 0xc0, 0xe2, 0x88, 0xbe, 0xae, 0x15, 0x10, 0x01, 0x20, 0x04, 0x28, 0x01]
    );
    // Required zero-valued fields are still emitted; vma fd -1 is zigzag 01.
    let v = VmaEntry {
        fd: -1,
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(
        v,
        [0x08, 0, 0x10, 0, 0x18, 0, 0x20, 0, 0x28, 0, 0x30, 0, 0x38, 0, 0x40, 0x01]
    );
    // An empty seccomp entry is a zero-length payload (12-byte file).
    let mut w = ImageWriter::new(Kind::Seccomp);
    w.write_entry(&SeccompEntry::default()).unwrap();
    assert_eq!(w.bytes().len(), 12);
}

fn pstree_bytes() -> Vec<u8> {
    let mut w = ImageWriter::new(Kind::Pstree);
    for pid in [1, 2] {
        w.write_entry(&PstreeEntry {
            pid,
            threads: vec![pid],
            ..Default::default()
        })
        .unwrap();
    }
    w.into_bytes()
}

#[test]
fn truncated_length_is_reported_with_offset() {
    let b = pstree_bytes();
    // Entries are 4 + 10 bytes: cut two bytes into the second length.
    let cut = &b[..8 + 4 + 10 + 2];
    let mut r = ImageReader::new("pstree.img", cut, Kind::Pstree).unwrap();
    assert!(r.next_entry::<PstreeEntry>().unwrap().is_some());
    let e = r.next_entry::<PstreeEntry>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "pstree.img: truncated at offset 22: entry length cut (2 of 4 bytes)"
    );
}

#[test]
fn truncated_payload_is_reported_with_offset() {
    let b = pstree_bytes();
    let cut = &b[..b.len() - 3];
    let mut r = ImageReader::new("pstree.img", cut, Kind::Pstree).unwrap();
    let e = r.read_all::<PstreeEntry>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "pstree.img: truncated at offset 26: entry payload cut (7 of 10 bytes)"
    );
}

#[test]
fn wrong_and_foreign_magic() {
    let b = pstree_bytes();
    let e = ImageReader::new("core-1.img", &b, Kind::Core).unwrap_err();
    assert_eq!(
        e.to_string(),
        "core-1.img: magic 0x50273030 is not CORE (expected 0x55053847)"
    );
    // Common header in front of the inventory (CRIU would misread it).
    let e = ImageReader::new("inventory.img", &b, Kind::Inventory).unwrap_err();
    assert!(
        matches!(
            e,
            Error::WrongMagic {
                found: IMG_COMMON_MAGIC,
                ..
            }
        ),
        "{e}"
    );
    // Random bytes: not an image at all.
    let junk = [0x48, 0x83, 0xec, 0x08, 0x48, 0x8b, 0x05, 0x7d, 1, 2, 3];
    let e = ImageReader::new("pages-1.img", &junk, Kind::Pstree).unwrap_err();
    assert!(e.to_string().contains("magic 0x08ec8348 is not PSTREE"), "{e}");
    let e = ImageReader::detect("pages-1.img", &junk).unwrap_err();
    assert_eq!(e.to_string(), "Unknown image magic 0x08ec8348 in pages-1.img");
    let e = ImageReader::new("short.img", &[0x19, 0x43], Kind::Pstree).unwrap_err();
    assert!(matches!(e, Error::NoHeader { size: 2, .. }));
}

#[test]
fn oversized_entry_and_garbage_payload() {
    let mut b = Kind::Pstree.header_bytes();
    b.extend_from_slice(&(100u32 << 20).to_le_bytes());
    let mut r = ImageReader::new("p.img", &b, Kind::Pstree).unwrap();
    assert!(matches!(r.next_payload(), Err(Error::EntryTooBig { offset: 8, .. })));
    let mut b = Kind::Pstree.header_bytes();
    b.extend_from_slice(&[2, 0, 0, 0, 0xff, 0xff]);
    let mut r = ImageReader::new("p.img", &b, Kind::Pstree).unwrap();
    let e = r.next_entry::<PstreeEntry>().unwrap_err();
    assert!(
        e.to_string()
            .starts_with("p.img: cannot decode PstreeEntry at offset 8"),
        "{e}"
    );
}

#[test]
fn single_entry_images_need_exactly_one() {
    let b = pstree_bytes();
    let e = ImageReader::new("p", &b, Kind::Pstree)
        .unwrap()
        .read_single::<PstreeEntry>()
        .unwrap_err();
    assert!(matches!(e, Error::EntryCount { found: 2, .. }));
    let empty = Kind::Fs.header_bytes();
    let e = ImageReader::new("fs-1.img", &empty, Kind::Fs)
        .unwrap()
        .read_one::<FsEntry>()
        .unwrap_err();
    assert!(matches!(e, Error::MissingEntry { offset: 8, .. }), "{e}");
}

#[test]
fn raw_extra_bytes() {
    let mut w = ImageWriter::new(Kind::PipesData);
    w.write_entry(&PipeDataEntry {
        pipe_id: 1,
        bytes: 5,
        size: None,
    })
    .unwrap();
    w.write_raw(b"hello");
    let b = w.into_bytes();
    let mut r = ImageReader::new("pd", &b, Kind::PipesData).unwrap();
    let e: PipeDataEntry = r.read_one().unwrap();
    assert_eq!(r.read_raw(e.bytes as usize).unwrap(), b"hello");
    assert!(r.at_eof());
    let mut r = ImageReader::new("pd", &b[..b.len() - 1], Kind::PipesData).unwrap();
    let _: PipeDataEntry = r.read_one().unwrap();
    let e = r.read_raw(5).unwrap_err();
    assert!(e.to_string().contains("extra data cut (4 of 5 bytes)"), "{e}");
}

// ---------------------------------------------------------------- directory

#[test]
fn sample_directory_opens_and_reads_back() {
    let (_t, p) = sample_dir();
    let dir = ImageDir::open(&p).unwrap();
    assert_eq!(dir.inventory().unwrap().cryo_format, Some(1));
    let tree: Vec<PstreeEntry> = dir.read_image(names::PSTREE, Kind::Pstree).unwrap();
    assert_eq!(tree[0].threads, [100, 101]);
    let core: CoreEntry = dir.read_single(&names::core(100), Kind::Core).unwrap();
    assert_eq!(core, sample_core(100, true));
    assert_eq!(core.tc.unwrap().sigactions.len(), 62);
    let mm: MmEntry = dir.read_single(&names::mm(100), Kind::Mm).unwrap();
    assert_eq!(mm.cryo_vdso_size, Some(8192));
    let idx = dir.pagemap_index(100).unwrap();
    assert_eq!(idx.pages_bytes, 3 * 4096);
    assert_eq!(idx.file_offset(0x60_1000), Some(2 * 4096));
    let pd = dir.read_pipes_data(names::PIPES_DATA).unwrap();
    assert_eq!(pd[0].0.bytes, 10);
    assert_eq!(pd[0].1, b"hello-pipe");
    // Modes: directory 0700, files 0600.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700);
    for f in dir.files().unwrap() {
        let m = fs::metadata(p.join(&f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{f}");
    }
    // The manifest lists protobuf images only.
    let m = dir.read_manifest().unwrap().unwrap();
    assert!(m.contains_key("core-101.img"));
    assert!(m.contains_key("stats-dump"));
    assert!(!m.contains_key("pages-1.img"));
}

#[test]
fn one_or_eof_images() {
    let (_t, p) = sample_dir();
    let dir = ImageDir::open(&p).unwrap();
    let fs_: Option<FsEntry> = dir.read_single_opt(&names::fs(100), Kind::Fs).unwrap();
    assert_eq!(fs_.unwrap().cwd_id, 5);
    let none: Option<FsEntry> = dir.read_single_opt(&names::fs(999), Kind::Fs).unwrap();
    assert!(none.is_none());
    dir.write_image::<FsEntry>(&names::fs(7), Kind::Fs, &[]).unwrap();
    let empty: Option<FsEntry> = dir.read_single_opt(&names::fs(7), Kind::Fs).unwrap();
    assert!(empty.is_none());
    dir.write_image(&names::fs(8), Kind::Fs, &[FsEntry::default(), FsEntry::default()])
        .unwrap();
    let e = dir.read_single_opt::<FsEntry>(&names::fs(8), Kind::Fs).unwrap_err();
    assert!(matches!(e, Error::EntryCount { found: 2, .. }), "{e}");
    let e = dir.read_single::<FsEntry>(&names::fs(999), Kind::Fs).unwrap_err();
    assert!(e.to_string().ends_with("fs-999.img: image is missing"), "{e}");
}

#[test]
fn open_errors() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    assert!(matches!(ImageDir::open(&missing), Err(Error::NoDir { .. })));
    let file = t.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(ImageDir::open(&file), Err(Error::NotDir { .. })));
    assert!(matches!(ImageDir::create(&file), Err(Error::NotDir { .. })));
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(ImageDir::open(&empty), Err(Error::EmptyDir { .. })));
    fs::write(empty.join("core-1.img"), b"x").unwrap();
    let e = ImageDir::open(&empty).unwrap_err();
    assert!(
        e.to_string().ends_with("not an image directory (no inventory.img)"),
        "{e}"
    );
    let d = ImageDir::create(&empty).unwrap();
    assert!(matches!(d.file_path("../x"), Err(Error::BadName { .. })));
}

#[test]
fn manifest_catches_a_flipped_byte() {
    let (_t, p) = sample_dir();
    let f = p.join("core-101.img");
    let mut b = fs::read(&f).unwrap();
    b[40] ^= 0x01;
    fs::write(&f, &b).unwrap();
    let e = ImageDir::open(&p).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Corrupted { .. }), "{msg}");
    assert!(msg.contains("core-101.img: corrupted (crc32"), "{msg}");
    assert_eq!(msg.lines().count(), 1);
}

#[test]
fn manifest_catches_truncation_and_missing_files() {
    let (_t, p) = sample_dir();
    let f = p.join("mm-100.img");
    let b = fs::read(&f).unwrap();
    fs::write(&f, &b[..b.len() - 1]).unwrap();
    let e = ImageDir::open(&p).unwrap_err();
    assert!(e.to_string().contains("mm-100.img: truncated ("), "{e}");
    fs::remove_file(&f).unwrap();
    let e = ImageDir::open(&p).unwrap_err();
    assert!(matches!(e, Error::ManifestMissing { .. }), "{e}");
}

#[test]
fn manifest_itself_is_checked() {
    let (_t, p) = sample_dir();
    let f = p.join(names::MANIFEST);
    let mut b = fs::read(&f).unwrap();
    // Turn one size digit into another digit: still parses, seal breaks.
    let pos = b.iter().position(|&c| c == b' ').unwrap() + 1;
    b[pos] = if b[pos] == b'9' { b'8' } else { b[pos] + 1 };
    fs::write(&f, &b).unwrap();
    assert!(matches!(ImageDir::open(&p), Err(Error::BadManifest { .. })));
    // A cut manifest loses its seal.
    let good = {
        let (_t2, p2) = sample_dir();
        fs::read(p2.join(names::MANIFEST)).unwrap()
    };
    fs::write(&f, &good[..good.len() - 20]).unwrap();
    assert!(matches!(ImageDir::open(&p), Err(Error::BadManifest { .. })));
}

#[test]
fn no_manifest_means_criu_made_and_is_accepted() {
    let (_t, p) = sample_dir();
    fs::remove_file(p.join(names::MANIFEST)).unwrap();
    let dir = ImageDir::open(&p).unwrap();
    assert!(!dir.verify().unwrap());
}

#[test]
fn sedded_pages_pass_but_short_pages_fail() {
    let (_t, p) = sample_dir();
    let f = p.join("pages-1.img");
    // Same-size edit of page data: fine (no checksum on pages).
    let mut b = fs::read(&f).unwrap();
    b[100] = 0;
    fs::write(&f, &b).unwrap();
    ImageDir::open(&p).unwrap();
    fs::write(&f, &b[..8192]).unwrap();
    let e = ImageDir::open(&p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pages-1.img is shorter than its pagemap (8192 bytes, pagemap needs 12288)"
    );
}

#[test]
fn newer_format_is_refused() {
    let (_t, p) = sample_dir();
    let dir = ImageDir::create(&p).unwrap();
    let mut inv = new_inventory(ids(1, 1));
    inv.cryo_format = Some(CRYO_FORMAT + 1);
    dir.write_image(names::INVENTORY, Kind::Inventory, &[inv]).unwrap();
    dir.finish_manifest().unwrap();
    let e = ImageDir::open(&p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "inventory.img: images written by a newer cryo (format 2, this cryo reads 1)"
    );
}

#[test]
fn create_clears_the_completion_markers() {
    let (_t, p) = sample_dir();
    let _dir = ImageDir::create(&p).unwrap();
    assert!(!p.join(names::MANIFEST).exists());
    assert!(!p.join(names::INVENTORY).exists());
    assert!(matches!(ImageDir::open(&p), Err(Error::NotImageDir { .. })));
}

#[test]
fn crit_style_base64() {
    use super::show::crit_base64;
    assert_eq!(crit_base64(b""), "");
    assert_eq!(crit_base64(b"hello-pipe"), "aGVsbG8tcGlwZQ==\n");
    let long = crit_base64(&[0u8; 58]);
    assert_eq!(long.lines().map(str::len).collect::<Vec<_>>(), [76, 4]);
    assert!(long.ends_with('\n'));
}

#[test]
fn fnv_reference_values() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

// ---------------------------------------------------------------- show

#[test]
fn show_single_files() {
    let (_t, p) = sample_dir();
    let v = show_path(p.join("pstree.img")).unwrap();
    assert_eq!(v["magic"], "PSTREE");
    assert_eq!(v["entries"][0]["pid"], 100);
    assert_eq!(v["entries"][0]["threads"], serde_json::json!([100, 101]));
    let v = show_path(p.join("core-100.img")).unwrap();
    assert_eq!(v["entries"][0]["mtype"], "X86_64");
    assert_eq!(v["entries"][0]["tc"]["comm"], "sleeper");
    assert_eq!(v["entries"][0]["thread_info"]["gpregs"]["mode"], "NATIVE");
    assert_eq!(v["entries"][0]["thread_info"]["gpregs"]["ip"], 0x7f00_0000_1234u64);
    let v = show_path(p.join("pagemap-100.img")).unwrap();
    assert_eq!(v["entries"][0], serde_json::json!({"pages_id": 1}));
    assert_eq!(v["entries"][2]["nr_pages"], 2);
    assert_eq!(v["entries"][2]["compat_nr_pages"], 2);
    let v = show_path(p.join("pipes-data.img")).unwrap();
    assert_eq!(v["entries"][0]["bytes"], 10);
    assert_eq!(v["entries"][0]["extra"], "aGVsbG8tcGlwZQ==\n");
    let v = show_path(p.join("files.img")).unwrap();
    assert_eq!(v["entries"][2]["type"], "PIPE");
    assert_eq!(v["entries"][2]["pipe"]["pipe_id"], 4242);
    let v = show_path(p.join("stats-dump")).unwrap();
    assert_eq!(v["magic"], "STATS");
    assert_eq!(v["entries"][0]["dump"]["freezing_time"], 184);
    let v = show_path(p.join("inventory.img")).unwrap();
    assert_eq!(v["entries"][0]["lsmtype"], "NO_LSM");
    assert_eq!(v["entries"][0]["cryo_format"], 1);
    let e = show_path(p.join("pages-1.img")).unwrap_err();
    assert!(e.to_string().starts_with("Unknown image magic 0xabababab in "), "{e}");
}

#[test]
fn show_directory() {
    let (_t, p) = sample_dir();
    // A CRIU image cryo has no schema for, and a damaged image.
    let mut unix = Vec::new();
    unix.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes());
    unix.extend_from_slice(&0x5437_3943u32.to_le_bytes());
    fs::write(p.join("unixsk.img"), &unix).unwrap();
    let b = fs::read(p.join("fs-100.img")).unwrap();
    fs::write(p.join("fs-100.img"), &b[..b.len() - 1]).unwrap();
    let v = show_path(&p).unwrap();
    assert_eq!(v["pages-1.img"], serde_json::json!({"raw": true, "size": 12288}));
    assert_eq!(v["unixsk.img"]["magic"], "UNIXSK");
    assert_eq!(v["unixsk.img"]["decoded"], false);
    assert!(v["fs-100.img"]["error"].as_str().unwrap().contains("truncated"));
    assert_eq!(v["ids-100.img"]["entries"][0]["files_id"], 2);
    assert_eq!(v["tty-info.img"]["entries"][0]["type"], "PTY");
    assert_eq!(v["cryo.sums"]["raw"], true);
}

// ---------------------------------------------------------------- crit

/// The first place where two JSON values differ, as a path.
fn json_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = json_diff(u, v, &format!("{at}.{k}")) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some(format!("{at}.{k}: ours {u:?}, crit {v:?}")),
                }
            }
            None
        }
        (Array(x), Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| json_diff(u, v, &format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{at}: ours {a}, crit {b}")),
    }
}

fn assert_same(ours: &serde_json::Value, theirs: &serde_json::Value, name: &str) {
    if let Some(d) = json_diff(ours, theirs, name) {
        panic!("cryo show and crit decode differ at {d}");
    }
}

fn crit_decode(file: &Path) -> serde_json::Value {
    let out = Command::new("crit")
        .args(["decode", "-i"])
        .arg(file)
        .output()
        .expect("run crit");
    assert!(
        out.status.success(),
        "crit decode -i {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("crit output for {} is not JSON: {e}", file.display()))
}

/// Debian's crit (3.17) decodes every file cryo writes, with the values
/// cryo put there; where both schemas agree, crit's JSON equals ours.
#[test]
fn crit_decodes_our_images() {
    if Command::new("crit").arg("--help").output().is_err() {
        eprintln!("SKIP: crit not installed (apt-get install criu)");
        return;
    }
    let (_t, p) = sample_dir();
    let dir = ImageDir::open(&p).unwrap();
    for name in dir.files().unwrap() {
        if names::pages_id(&name).is_some() || name == names::MANIFEST {
            continue;
        }
        let v = crit_decode(&p.join(&name));
        assert!(v["entries"].is_array(), "{name}: {v}");
    }
    let v = crit_decode(&p.join("pstree.img"));
    assert_eq!(v["magic"], "PSTREE");
    assert_eq!(v["entries"][0]["pid"], 100);
    let v = crit_decode(&p.join("inventory.img"));
    assert_eq!(v["entries"][0]["img_version"], 2);
    assert_eq!(v["entries"][0]["fdinfo_per_id"], true);
    let v = crit_decode(&p.join("core-100.img"));
    assert_eq!(v["entries"][0]["mtype"], "X86_64");
    assert_eq!(v["entries"][0]["tc"]["comm"], "sleeper");
    assert_eq!(v["entries"][0]["tc"]["sigactions"].as_array().unwrap().len(), 62);
    assert_eq!(v["entries"][0]["thread_info"]["fpregs"]["mxcsr"], 0x1f80);
    let v = crit_decode(&p.join("core-101.img"));
    assert!(v["entries"][0].get("tc").is_none());
    let v = crit_decode(&p.join("mm-100.img"));
    assert_eq!(v["entries"][0]["exe_file_id"], 1);
    assert_eq!(v["entries"][0]["vmas"][1]["status"], 0x221);
    assert_eq!(v["entries"][0]["vmas"][1]["fd"], -1);
    // crit 3.17 names pagemap field 2 `nr_pages`; cryo fills it.
    let v = crit_decode(&p.join("pagemap-100.img"));
    assert_eq!(v["entries"][0]["pages_id"], 1);
    assert_eq!(v["entries"][2]["nr_pages"], 2);
    let v = crit_decode(&p.join("pipes-data.img"));
    assert_eq!(v["entries"][0]["bytes"], 10);
    let v = crit_decode(&p.join("files.img"));
    assert_eq!(v["entries"][1]["reg"]["name"], "/tmp/data.txt");
    assert_eq!(v["entries"][3]["tty"]["regf_id"], 7);
    let v = crit_decode(&p.join("tty-info.img"));
    assert_eq!(v["entries"][0]["type"], "PTY");
    let v = crit_decode(&p.join("stats-dump"));
    assert_eq!(v["magic"], "STATS");

    // Same JSON as ours where crit 3.17's schema has every field we wrote.
    for name in [
        "pstree.img",
        "ids-100.img",
        "fs-100.img",
        "fdinfo-2.img",
        "files.img",
        "timens-0.img",
        "tty-info.img",
        "stats-dump",
        "seccomp.img",
    ] {
        let ours = show_path(p.join(name)).unwrap();
        let theirs = crit_decode(&p.join(name));
        assert_same(&ours, &theirs, name);
    }

    // Field names of the rest against crit's schema, after removing what
    // crit 3.17 lacks (CRIU 4.2 fields and cryo's own, image-format.md §4).
    let strip = |name: &str, paths: &[&[&str]]| {
        let mut ours = show_path(p.join(name)).unwrap();
        for path in paths {
            for e in ours["entries"].as_array_mut().unwrap() {
                let (last, parents) = path.split_last().unwrap();
                let mut at = &mut *e;
                for k in parents {
                    at = &mut at[*k];
                }
                at.as_object_mut().unwrap().remove(*last);
            }
        }
        ours
    };
    for core in ["core-100.img", "core-101.img"] {
        let ours = strip(
            core,
            &[&["thread_core", "cg_set"], &["thread_core", "creds", "cap_amb"]],
        );
        assert_same(&ours, &crit_decode(&p.join(core)), core);
    }
    let ours = strip(
        "mm-100.img",
        &[&["cryo_vdso_size"], &["cryo_vdso_hash"], &["cryo_vvar_start"]],
    );
    assert_same(&ours, &crit_decode(&p.join("mm-100.img")), "mm-100.img");
    let ours = strip("inventory.img", &[&["cryo_format"]]);
    assert_same(&ours, &crit_decode(&p.join("inventory.img")), "inventory.img");
    // Pagemap: crit's `nr_pages` is our field 2 `compat_nr_pages`.
    let mut ours = strip("pagemap-100.img", &[&["nr_pages"]]);
    for e in ours["entries"].as_array_mut().unwrap().iter_mut().skip(1) {
        let o = e.as_object_mut().unwrap();
        let n = o.remove("compat_nr_pages").unwrap();
        o.insert("nr_pages".into(), n);
    }
    assert_same(&ours, &crit_decode(&p.join("pagemap-100.img")), "pagemap-100.img");

    // crit x needs cross-file consistency (pstree -> core tc, ids -> fdinfo -> files).
    let out = Command::new("crit").arg("x").arg(&p).arg("ps").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sleeper"));
    let out = Command::new("crit").arg("x").arg(&p).arg("fds").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fds = String::from_utf8_lossy(&out.stdout);
    assert!(fds.contains("/tmp/data.txt") && fds.contains("pipe[4242]"), "{fds}");
}

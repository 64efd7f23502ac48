//! The images of the file kinds against Debian's crit: every image cryo
//! writes for files decodes with crit, and `cryo show` prints the same
//! JSON (cryo's own `cryo_*` fields aside, which crit does not know, and
//! memfd_inode_entry.mode, which crit 3.17 predates).

use std::path::Path;
use std::process::Command;

use super::*;
use crate::image::{pb, show_path, ImageWriter, Kind};

fn crit(file: &Path) -> Option<serde_json::Value> {
    let out = Command::new("crit").args(["decode", "-i"]).arg(file).output().ok()?;
    assert!(
        out.status.success(),
        "crit decode {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("crit JSON"))
}

fn strip_cryo(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !k.starts_with("cryo_"));
            m.values_mut().for_each(strip_cryo);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_cryo),
        _ => {}
    }
}

fn sample_files() -> Vec<pb::FileEntry> {
    let fown = fown0();
    vec![
        pb::FileEntry {
            r#type: FD_PIPE,
            id: 1,
            pipe: Some(pb::PipeEntry {
                id: 1,
                pipe_id: 77,
                flags: 0o4001,
                fown,
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_FIFO,
            id: 2,
            fifo: Some(pb::FifoEntry {
                id: 2,
                pipe_id: 78,
                regf_id: Some(3),
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_UNIXSK,
            id: 4,
            usk: Some(pb::UnixSkEntry {
                id: 4,
                ino: 1000,
                r#type: 1,
                state: 10,
                flags: 0o4002,
                uflags: 0,
                backlog: 5,
                peer: 0,
                fown,
                opts: pb::SkOptsEntry {
                    so_sndbuf: 212992,
                    so_rcvbuf: 212992,
                    so_passcred: Some(false),
                    ..Default::default()
                },
                name: b"/tmp/sock".to_vec(),
                shutdown: Some(pb::SkShutdown::Write as i32),
                file_perms: Some(pb::FilePermsEntry {
                    mode: 0o140755,
                    uid: 0,
                    gid: 0,
                }),
                name_dir: None,
                deleted: None,
                ns_id: None,
                mnt_id: None,
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_EVENTFD,
            id: 5,
            efd: Some(pb::EventfdFileEntry {
                id: 5,
                flags: 2,
                fown,
                counter: 9,
                cryo_semaphore: Some(true),
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_EVENTPOLL,
            id: 6,
            epfd: Some(pb::EventpollFileEntry {
                id: 6,
                flags: 2,
                fown,
                tfd: vec![pb::EventpollTfdEntry {
                    id: 6,
                    tfd: 5,
                    events: 0x19,
                    data: 0x1111,
                    dev: Some(14),
                    inode: Some(3),
                    pos: Some(0),
                }],
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_SIGNALFD,
            id: 7,
            sgfd: Some(pb::SignalfdEntry {
                id: 7,
                flags: 2,
                fown,
                sigmask: 0x200,
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_TIMERFD,
            id: 8,
            tfd: Some(pb::TimerfdEntry {
                id: 8,
                flags: 2,
                fown,
                clockid: 1,
                ticks: 3,
                settime_flags: 0,
                vsec: 299,
                vnsec: 5,
                isec: 7,
                insec: 0,
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_INOTIFY,
            id: 9,
            ify: Some(pb::InotifyFileEntry {
                id: 9,
                flags: 0,
                fown,
                wd: vec![pb::InotifyWdEntry {
                    id: 9,
                    i_ino: 42,
                    mask: 0x300,
                    ignored_mask: 0,
                    s_dev: 0xfe0_0000,
                    wd: 1,
                    f_handle: pb::FhEntry {
                        bytes: 8,
                        r#type: 1,
                        handle: vec![0x2a; 16],
                        path: Some("/tmp".into()),
                        mnt_id: None,
                    },
                }],
            }),
            ..Default::default()
        },
        pb::FileEntry {
            r#type: FD_MEMFD,
            id: 10,
            memfd: Some(pb::MemfdFileEntry {
                id: 10,
                flags: 2,
                pos: 100,
                fown,
                inode_id: 1,
            }),
            ..Default::default()
        },
    ]
}

#[test]
fn crit_reads_every_file_image_like_show() {
    if Command::new("crit").arg("--help").output().is_err() {
        eprintln!("SKIP: crit not installed (apt-get install criu)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = crate::image::ImageDir::create(dir.path()).unwrap();
    img.write_image(image::names::FILES, Kind::Files, &sample_files())
        .unwrap();
    img.write_image(
        image::names::REMAP_FPATH,
        Kind::RemapFpath,
        &[pb::RemapFilePathEntry {
            orig_id: 3,
            remap_id: 1,
            remap_type: Some(pb::RemapType::Ghost as i32),
        }],
    )
    .unwrap();
    let mut w = ImageWriter::new(Kind::GhostFile);
    w.write_entry(&pb::GhostFileEntry {
        uid: 1,
        gid: 2,
        mode: 0o100644,
        ..Default::default()
    })
    .unwrap();
    w.write_raw(b"ghost content");
    img.save(&image::names::ghost_file(1), w).unwrap();
    let mut w = ImageWriter::new(Kind::GhostFile);
    w.write_entry(&pb::GhostFileEntry {
        uid: 1,
        gid: 2,
        mode: 0o100600,
        chunks: Some(true),
        size: Some(1 << 20),
        ..Default::default()
    })
    .unwrap();
    w.write_entry(&pb::GhostChunkEntry { len: 3, off: 8192 }).unwrap();
    w.write_raw(b"abc");
    img.save(&image::names::ghost_file(0x1a), w).unwrap();
    for (name, kind) in [
        (image::names::FIFO_DATA, Kind::FifoData),
        (image::names::PIPES_DATA, Kind::PipesData),
    ] {
        let mut w = ImageWriter::new(kind);
        w.write_entry(&pb::PipeDataEntry {
            pipe_id: 78,
            bytes: 4,
            size: Some(65536),
        })
        .unwrap();
        w.write_raw(b"fifo");
        img.save(name, w).unwrap();
    }
    let mut w = ImageWriter::new(Kind::SkQueues);
    for (i, m) in [&b"one"[..], b"second"].iter().enumerate() {
        w.write_entry(&pb::SkPacketEntry {
            id_for: 4 + i as u32,
            length: m.len() as u32,
            scm: vec![],
            addr: None,
        })
        .unwrap();
        w.write_raw(m);
    }
    img.save(image::names::SK_QUEUES, w).unwrap();
    img.write_image(
        image::names::MEMFD,
        Kind::MemfdInode,
        &[pb::MemfdInodeEntry {
            name: "buf".into(),
            uid: 0,
            gid: 0,
            size: 4096,
            shmid: 55,
            seals: 3,
            inode_id: 1,
            hugetlb_flag: None,
            mode: Some(0o100777),
        }],
    )
    .unwrap();
    let mut w = ImageWriter::new(Kind::Pagemap);
    w.write_entry(&pb::PagemapHead {
        pages_id: memfd::PAGES_ID_BASE + 1,
    })
    .unwrap();
    w.write_entry(&image::pages::new_entry(0, 1, image::PE_PRESENT))
        .unwrap();
    img.save(&memfd::pagemap_name(55), w).unwrap();

    for name in img.files().unwrap() {
        let p = dir.path().join(&name);
        let Some(theirs) = crit(&p) else { return };
        let mut ours = show_path(&p).unwrap();
        strip_cryo(&mut ours);
        if name.starts_with("pagemap-") {
            // crit 3.17 calls field 2 `nr_pages` (proto/README.md).
            for e in ours["entries"].as_array_mut().unwrap().iter_mut().skip(1) {
                let o = e.as_object_mut().unwrap();
                o.remove("nr_pages");
                let n = o.remove("compat_nr_pages").unwrap();
                o.insert("nr_pages".into(), n);
            }
        }
        if name == image::names::MEMFD {
            // crit 3.17 predates memfd_inode_entry.mode (CRIU 4.x).
            for e in ours["entries"].as_array_mut().unwrap() {
                e.as_object_mut().unwrap().remove("mode");
            }
        }
        assert_eq!(ours, theirs, "{name}: cryo show and crit decode differ");
    }
    // What the restore side reads back.
    let data = std::fs::read(dir.path().join(image::names::ghost_file(0x1a))).unwrap();
    let g = reg::parse_ghost("g", &data).unwrap();
    assert_eq!(g.chunks, vec![(8192, b"abc".to_vec())]);
    let pd = pipe::load_data(&img, image::names::FIFO_DATA, Kind::FifoData).unwrap();
    assert_eq!(pd[&78].data, b"fifo");
}

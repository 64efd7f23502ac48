//! `cryo pre-dump` and `cryo dump --prev-images-dir`: pre-copy into image
//! directories, CRIU's layout (each directory's `parent` link names the
//! previous one; pages already there are PE_PARENT).
//!
//! The write tracking must outlive each `cryo pre-dump` process: the
//! first one leaves the userfaultfd inside each task at a high fd
//! (close-on-exec, fd >= 512) and records it in `cryo-track` of its
//! directory; the next takes it over; the final `cryo dump
//! --prev-images-dir` removes it from the task before dumping, so the
//! restored tree never has it. A pre-dump directory holds only
//! `pagemap-PID.img`, `pages-N.img`, `cryo-track` and `parent`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::unistd::Pid;

use super::runs::RunSet;
use super::track::{RoundPages, Tracker};
use crate::dump::{self, PidView};
use crate::image::{self, pb, ImageReader, ImageWriter, Kind};
use crate::mem::{PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT};
use crate::sys::vm;

/// Name of the file recording the uffds left in the tasks.
pub const TRACK_FILE: &str = "cryo-track";

/// `--prev-images-dir` is relative to the images directory (as in CRIU).
/// Resolved lexically: DIR may not exist yet.
fn resolve(dir: &Path, prev: &Path) -> PathBuf {
    use std::path::Component;
    if prev.is_absolute() {
        return prev.to_path_buf();
    }
    let mut out = dir.to_path_buf();
    for c in prev.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Parses `cryo-track`: lines `IMAGE_PID FD`.
pub fn parse_track(text: &str) -> Result<Vec<(u32, i32)>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let mut it = l.split_whitespace();
            match (
                it.next().and_then(|p| p.parse().ok()),
                it.next().and_then(|f| f.parse().ok()),
                it.next(),
            ) {
                (Some(p), Some(f), None) => Ok((p, f)),
                _ => Err(format!("{TRACK_FILE}: line {}: expected \"PID FD\", got {l:?}", i + 1)),
            }
        })
        .collect()
}

fn read_track(prev: &Path) -> Result<Vec<(u32, i32)>> {
    let p = prev.join(TRACK_FILE);
    let text = fs::read_to_string(&p).with_context(|| {
        format!(
            "Cannot read {} (is {} a cryo pre-dump directory?)",
            p.display(),
            prev.display()
        )
    })?;
    parse_track(&text).map_err(|e| anyhow::anyhow!("{}: {e}", prev.display()))
}

/// Every page `prev/pagemap-PID.img` accounts for (present or parent).
fn covered(prev: &Path, vpid: u32) -> RunSet {
    let name = image::names::pagemap(vpid);
    let Ok(data) = fs::read(prev.join(&name)) else {
        return RunSet::default();
    };
    let Ok(mut r) = ImageReader::new(name, &data, Kind::Pagemap) else {
        return RunSet::default();
    };
    if r.read_one::<pb::PagemapHead>().is_err() {
        return RunSet::default();
    }
    let entries: Vec<pb::PagemapEntry> = r.read_all().unwrap_or_default();
    RunSet::from_ranges(entries.iter().filter_map(|e| {
        let fl = image::pages::entry_flags(e);
        (fl & (PE_PRESENT | PE_PARENT) != 0).then(|| (e.vaddr, e.vaddr + image::pages::entry_nr_pages(e) * PAGE_SIZE))
    }))
}

/// Copies `runs` of `pid` to `out`; returns the runs copied (pieces that
/// cannot be read any more are left out of file and pagemap alike).
fn copy_to(pid: i32, runs: &RunSet, out: &mut impl Write) -> Result<RunSet> {
    let mut ok = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for &(s, e) in runs.ranges() {
        let mut a = s;
        while a < e {
            let n = ((e - a) as usize).min(buf.len());
            if vm::read_remote(Pid::from_raw(pid), &[(a, n)], &mut buf[..n]).ok() == Some(n) {
                out.write_all(&buf[..n])?;
                ok.push((a, a + n as u64));
            } else {
                for p in (a..a + n as u64).step_by(PAGE_SIZE as usize) {
                    let pg = &mut buf[..PAGE_SIZE as usize];
                    if vm::read_remote(Pid::from_raw(pid), &[(p, PAGE_SIZE as usize)], pg).ok()
                        == Some(PAGE_SIZE as usize)
                    {
                        out.write_all(pg)?;
                        ok.push((p, p + PAGE_SIZE));
                    }
                }
            }
            a += n as u64;
        }
    }
    Ok(RunSet::from_ranges(ok))
}

fn write_round(dir: &Path, pages: &[RoundPages]) -> Result<u64> {
    let mut bytes = 0;
    for (i, p) in pages.iter().enumerate() {
        let pages_id = i as u32 + 1;
        let name = image::names::pages(pages_id);
        let mut f = std::io::BufWriter::new(
            fs::File::create(dir.join(&name)).with_context(|| format!("Cannot create {name}"))?,
        );
        let copied = copy_to(p.pid, &p.dirty, &mut f)?;
        f.flush()?;
        bytes += copied.bytes();
        let mut all: Vec<(u64, u64, u32)> = copied
            .ranges()
            .iter()
            .map(|r| (r.0, r.1, PE_PRESENT | PE_LAZY))
            .chain(
                p.parent
                    .subtract(&copied)
                    .ranges()
                    .iter()
                    .map(|r| (r.0, r.1, PE_PARENT)),
            )
            .collect();
        all.sort_unstable();
        let mut w = ImageWriter::new(Kind::Pagemap);
        w.write_entry(&pb::PagemapHead { pages_id })?;
        for (s, e, fl) in all {
            w.write_entry(&image::pages::new_entry(s, (e - s) / PAGE_SIZE, fl))?;
        }
        fs::write(dir.join(image::names::pagemap(p.vpid)), w.bytes())
            .with_context(|| format!("Cannot write {}", image::names::pagemap(p.vpid)))?;
    }
    Ok(bytes)
}

fn link_parent(dir: &Path, prev: &Path) -> Result<()> {
    let link = dir.join("parent");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(prev, &link).with_context(|| format!("Cannot create {}", link.display()))
}

/// `cryo pre-dump -t PID -D DIR [--prev-images-dir PREV]`: copies the
/// tree's memory (all of it, or what was written since PREV) while it
/// runs. Returns the bytes copied.
pub fn pre_dump(pid: i32, dir: &Path, prev: Option<&Path>) -> Result<u64> {
    crate::require_root("pre-dump")?;
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        bail!("No process with pid {pid}");
    }
    let view = PidView::of_tree(pid)?;
    let prev_abs = prev.map(|p| resolve(dir, p));
    let kept = match &prev_abs {
        Some(p) => read_track(p)?,
        None => Vec::new(),
    };
    let mut t = Tracker::start_with(
        pid,
        |p| view.pid(p),
        true,
        &kept,
        |v| prev_abs.as_deref().map(|p| covered(p, v)).unwrap_or_default(),
    )?;
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .with_context(|| format!("Cannot create {}", dir.display()))?;
    let _ = fs::remove_file(dir.join(TRACK_FILE));
    let pages = t.round(prev.is_none())?;
    let bytes = write_round(dir, &pages)?;
    if let Some(p) = prev {
        link_parent(dir, p)?;
    }
    let mut track = String::new();
    for (v, fd) in t.kept() {
        track.push_str(&format!("{v} {fd}\n"));
    }
    fs::write(dir.join(TRACK_FILE), track).context("Cannot write the tracking record")?;
    Ok(bytes)
}

/// `cryo dump --prev-images-dir PREV`: the final dump, copying only what
/// was written since the pre-dump in PREV (its write tracking is taken
/// over and removed from the tasks first).
pub fn dump_after(mut opts: dump::DumpOpts, prev: &Path) -> Result<dump::DumpStats> {
    let prev_abs = resolve(&opts.dir, prev);
    let kept = read_track(&prev_abs)?;
    let view = PidView::of_tree(opts.pid)?;
    let t = Tracker::start_with(opts.pid, |p| view.pid(p), false, &kept, |v| covered(&prev_abs, v))?;
    opts.prev = Some(std::sync::Arc::new(t));
    let st = dump::dump(&opts)?;
    link_parent(&opts.dir, prev)?;
    Ok(st)
}

/// Removes the write tracking the pre-dump in `prev` left in the tree
/// rooted at `pid` (a pre-copy that ends without a final dump).
pub fn abandon(pid: i32, prev: &Path) -> Result<()> {
    let kept = read_track(prev)?;
    let view = PidView::of_tree(pid)?;
    let t = Tracker::start_with(pid, |p| view.pid(p), false, &kept, |_| RunSet::default())?;
    drop(t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prev_is_relative_to_the_images_dir() {
        assert_eq!(resolve(Path::new("/a/d2"), Path::new("../d1")), Path::new("/a/d1"));
        assert_eq!(resolve(Path::new("/a/d2"), Path::new("/x")), Path::new("/x"));
        assert_eq!(resolve(Path::new("d2"), Path::new("./p")), Path::new("d2/p"));
    }

    #[test]
    fn track_file() {
        assert_eq!(parse_track("7 512\n\n9 513\n").unwrap(), vec![(7, 512), (9, 513)]);
        assert!(parse_track("7\n").unwrap_err().contains("line 1"));
        assert!(parse_track("7 x\n").is_err());
        assert!(parse_track("7 512 3\n").is_err());
    }
}

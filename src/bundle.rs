//! Tar bundles: an image directory as one stream (`--tar FILE|-`).
//!
//! The stream of a plain tree holds the image files at its top level. A
//! container's stream uses podman's export layout: the images under
//! `checkpoint/`, `stats-dump`, `spec.dump` and `config.dump` beside them
//! (calling-conventions.md §5.3), so podman's exports restore too. Files
//! are written with mode 0600; extraction refuses absolute paths, `..`
//! and anything that is not a regular file.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A private (0700) temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<TempDir> {
        let base = std::env::temp_dir();
        for i in 0..1000u32 {
            let p = base.join(format!("cryo-{what}-{}-{i}", std::process::id()));
            match fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(TempDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("Cannot create {}", p.display())),
            }
        }
        bail!("Cannot create a temporary directory in {}", base.display())
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Creates a file readable by its owner only.
pub fn create_private(p: &Path) -> Result<fs::File> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .with_context(|| format!("Cannot create {}", p.display()))
}

/// Writes every regular file of `dir` into a tar stream.
pub fn write_tar(dir: &Path, out: impl Write) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("Cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    for n in names {
        let p = dir.join(&n);
        let mut f = fs::File::open(&p).with_context(|| format!("Cannot open {}", p.display()))?;
        let len = f.metadata()?.len();
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, Path::new(&n), &mut f)
            .with_context(|| format!("Cannot add {} to the tar stream", p.display()))?;
    }
    b.into_inner().context("Cannot finish the tar stream")?.flush()?;
    Ok(())
}

/// Writes a container's image directory in podman's export layout, with
/// `meta` files (name, bytes) at the top level.
pub fn write_container_tar(dir: &Path, out: impl Write, meta: &[(&str, Vec<u8>)]) -> Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("Cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o700);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, "checkpoint", std::io::empty())?;
    let add = |b: &mut tar::Builder<_>, name: &Path, mut data: &mut dyn Read, len: u64| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &mut data)
            .with_context(|| format!("Cannot add {} to the tar stream", name.display()))
    };
    for n in &names {
        let p = dir.join(n);
        let mut f = fs::File::open(&p).with_context(|| format!("Cannot open {}", p.display()))?;
        let len = f.metadata()?.len();
        add(&mut b, &Path::new("checkpoint").join(n), &mut f, len)?;
    }
    let stats = dir.join("stats-dump");
    if stats.exists() {
        let mut f = fs::File::open(&stats)?;
        let len = f.metadata()?.len();
        add(&mut b, Path::new("stats-dump"), &mut f, len)?;
    }
    for (name, bytes) in meta {
        add(&mut b, Path::new(name), &mut &bytes[..], bytes.len() as u64)?;
    }
    b.into_inner().context("Cannot finish the tar stream")?.flush()?;
    Ok(())
}

/// Directories of podman's export layout that hold no images.
const PODMAN_EXTRA_DIRS: [&str; 3] = ["volumes", "artifacts", "pre-checkpoint"];

/// Extracts a tar stream of image files into `dir`: a plain stream, or a
/// container's in podman's export layout (the images from `checkpoint/`;
/// the metadata files beside them are kept too, volumes are not).
pub fn read_tar(input: impl Read, dir: &Path) -> Result<()> {
    let mut a = tar::Archive::new(input);
    let mut n = 0usize;
    for e in a.entries().context("Cannot read the tar stream")? {
        let mut e = e.context("Corrupted tar stream")?;
        let path = e.path().context("Bad path in the tar stream")?.into_owned();
        let mut comps = Vec::new();
        for c in path.components() {
            match c {
                Component::CurDir => {}
                Component::Normal(x) => comps.push(x.to_os_string()),
                _ => bail!("Tar stream entry {} is not a plain image file name", path.display()),
            }
        }
        let ty = e.header().entry_type();
        if ty == tar::EntryType::Directory {
            continue;
        }
        let name = match comps.as_slice() {
            [n] => n.clone(),
            [d, n] if d == "checkpoint" => n.clone(),
            [d, ..] if PODMAN_EXTRA_DIRS.iter().any(|x| d == x) => continue,
            _ => bail!("Tar stream entry {} is not a plain image file name", path.display()),
        };
        if ty == tar::EntryType::Symlink && name == "parent" {
            continue; // podman's link to a pre-checkpoint
        }
        if ty != tar::EntryType::Regular {
            bail!("Tar stream entry {} is not a regular file", path.display());
        }
        let dst = dir.join(&name);
        let mut f = create_private(&dst)?;
        std::io::copy(&mut e, &mut f).with_context(|| format!("Cannot extract {}", path.display()))?;
        n += 1;
    }
    if n == 0 {
        bail!("The tar stream holds no image files");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_round_trip_and_path_checks() {
        let a = TempDir::new("t1").unwrap();
        fs::write(a.path().join("x.img"), b"hello").unwrap();
        fs::write(a.path().join("pages-1.img"), vec![7u8; 8192]).unwrap();
        let mut buf = Vec::new();
        write_tar(a.path(), &mut buf).unwrap();
        let b = TempDir::new("t2").unwrap();
        read_tar(&buf[..], b.path()).unwrap();
        assert_eq!(fs::read(b.path().join("x.img")).unwrap(), b"hello");
        assert_eq!(fs::read(b.path().join("pages-1.img")).unwrap().len(), 8192);

        // An entry escaping the directory is refused.
        let mut evil = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        evil.append_data(&mut h, "sub/x", &b"x"[..]).unwrap();
        let bytes = evil.into_inner().unwrap();
        let c = TempDir::new("t3").unwrap();
        assert!(read_tar(&bytes[..], c.path()).is_err());
        assert!(read_tar(&[][..], c.path()).is_err());

        // A container's stream: podman's layout, read back.
        let mut buf = Vec::new();
        write_container_tar(a.path(), &mut buf, &[("spec.dump", b"{}".to_vec())]).unwrap();
        let mut names: Vec<String> = tar::Archive::new(&buf[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["checkpoint", "checkpoint/pages-1.img", "checkpoint/x.img", "spec.dump"]
        );
        let d = TempDir::new("t4").unwrap();
        read_tar(&buf[..], d.path()).unwrap();
        assert_eq!(fs::read(d.path().join("x.img")).unwrap(), b"hello");
        assert_eq!(fs::read(d.path().join("spec.dump")).unwrap(), b"{}");
    }
}

//! Tar bundles: an image directory as one stream (`--tar FILE|-`).
//!
//! The stream holds the image files at its top level. Files are written
//! with mode 0600; extraction refuses absolute paths, `..` and anything
//! that is not a regular file.

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

/// Extracts a tar stream of image files into `dir`.
pub fn read_tar(input: impl Read, dir: &Path) -> Result<()> {
    let mut a = tar::Archive::new(input);
    let mut n = 0usize;
    for e in a.entries().context("Cannot read the tar stream")? {
        let mut e = e.context("Corrupted tar stream")?;
        let path = e.path().context("Bad path in the tar stream")?.into_owned();
        let ok = path.components().count() == 1 && matches!(path.components().next(), Some(Component::Normal(_)));
        if !ok {
            bail!("Tar stream entry {} is not a plain image file name", path.display());
        }
        if e.header().entry_type() != tar::EntryType::Regular {
            bail!("Tar stream entry {} is not a regular file", path.display());
        }
        let dst = dir.join(&path);
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
    }
}

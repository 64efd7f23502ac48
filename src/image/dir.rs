//! An image directory: file naming, 0600 file creation, typed read/write
//! helpers and the integrity manifest `cryo.sums`.
//!
//! CRIU images carry no checksum. cryo adds its own manifest file (crit
//! and CRIU ignore it): one line `<crc32 hex> <size> <name>` per protobuf
//! image written through [`ImageDir`], closed by a line
//! `# crc32 <hex>` over the lines before it. Raw `pages-N.img` files are
//! not listed (users edit them in place on purpose); their size is checked
//! against the pagemap instead. A directory without `cryo.sums` (made by
//! CRIU) is accepted with a warning.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use prost::Message;

use super::error::{Error, Result};
use super::framing::{ImageReader, ImageWriter};
use super::inventory::check_inventory;
use super::magic::Kind;
use super::pages::PagemapIndex;
use super::pb::{InventoryEntry, PagemapEntry, PagemapHead, PipeDataEntry};

/// File names of the images (CRIU's naming, image-format.md §2).
pub mod names {
    /// The inventory (read first).
    pub const INVENTORY: &str = "inventory.img";
    /// Process tree.
    pub const PSTREE: &str = "pstree.img";
    /// Every open-file object.
    pub const FILES: &str = "files.img";
    /// Terminals.
    pub const TTY_INFO: &str = "tty-info.img";
    /// Bytes queued in ptys.
    pub const TTY_DATA: &str = "tty-data.img";
    /// Unread pipe contents.
    pub const PIPES_DATA: &str = "pipes-data.img";
    /// Unread FIFO contents.
    pub const FIFO_DATA: &str = "fifo-data.img";
    /// Files whose path is stood in for (ghost files).
    pub const REMAP_FPATH: &str = "remap-fpath.img";
    /// Queued socket messages.
    pub const SK_QUEUES: &str = "sk-queues.img";
    /// memfd inodes.
    pub const MEMFD: &str = "memfd.img";
    /// File locks held by the tree.
    pub const FILE_LOCKS: &str = "filelocks.img";
    /// Seccomp filters.
    pub const SECCOMP: &str = "seccomp.img";
    /// Dump statistics (service header).
    pub const STATS_DUMP: &str = "stats-dump";
    /// Restore statistics (service header).
    pub const STATS_RESTORE: &str = "stats-restore";
    /// cryo's integrity manifest.
    pub const MANIFEST: &str = "cryo.sums";

    /// `core-<tid>.img`, one per thread.
    pub fn core(tid: u32) -> String {
        format!("core-{tid}.img")
    }
    /// `ids-<pid>.img`.
    pub fn ids(pid: u32) -> String {
        format!("ids-{pid}.img")
    }
    /// `mm-<pid>.img`.
    pub fn mm(pid: u32) -> String {
        format!("mm-{pid}.img")
    }
    /// `pagemap-<pid>.img`.
    pub fn pagemap(pid: u32) -> String {
        format!("pagemap-{pid}.img")
    }
    /// `pages-<pages_id>.img` (raw).
    pub fn pages(pages_id: u32) -> String {
        format!("pages-{pages_id}.img")
    }
    /// `fdinfo-<files_id>.img`.
    pub fn fdinfo(files_id: u32) -> String {
        format!("fdinfo-{files_id}.img")
    }
    /// `fs-<pid>.img`.
    pub fn fs(pid: u32) -> String {
        format!("fs-{pid}.img")
    }
    /// `ghost-file-<id in hex>.img`.
    pub fn ghost_file(id: u32) -> String {
        format!("ghost-file-{id:x}.img")
    }
    /// `timens-<id>.img` (0 = the dumper's time namespace).
    pub fn timens(id: u32) -> String {
        format!("timens-{id}.img")
    }

    fn numbered(name: &str, prefix: &str) -> Option<u32> {
        let n = name.strip_prefix(prefix)?.strip_suffix(".img")?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }
    /// The N of a raw `pages-N.img` name.
    pub fn pages_id(name: &str) -> Option<u32> {
        numbered(name, "pages-")
    }
    /// The pid of a `pagemap-<pid>.img` name.
    pub fn pagemap_pid(name: &str) -> Option<u32> {
        numbered(name, "pagemap-")
    }
}

/// CRC32 and size of one written file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSum {
    pub crc: u32,
    pub size: u64,
}

/// An image directory opened for writing ([`ImageDir::create`]) or
/// reading ([`ImageDir::open`]). Methods take `&self`; the recorded
/// checksums sit behind a mutex so writers may share it across threads.
#[derive(Debug)]
pub struct ImageDir {
    path: PathBuf,
    sums: Mutex<BTreeMap<String, FileSum>>,
    inventory: Option<InventoryEntry>,
}

fn create_0600(path: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    // An existing file keeps its old mode through O_CREAT; force 0600.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io("chmod", path, e))?;
    Ok(f)
}

fn manifest_body_crc(body: &str) -> u32 {
    crc32fast::hash(body.as_bytes())
}

impl ImageDir {
    /// Prepares `path` for a dump: creates it (mode 0700) if missing.
    /// An existing directory is reused; cryo's files in it are
    /// overwritten as they are written. A stale `inventory.img` and
    /// `cryo.sums` are removed first, so a dump that dies half-way never
    /// looks complete.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        match fs::metadata(&path) {
            Ok(m) if !m.is_dir() => return Err(Error::NotDir { path }),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(|e| Error::io("create directory", &path, e))?,
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
        for stale in [names::MANIFEST, names::INVENTORY] {
            let p = path.join(stale);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", p, e)),
            }
        }
        Ok(ImageDir {
            path,
            sums: Mutex::new(BTreeMap::new()),
            inventory: None,
        })
    }

    /// Opens an image directory for restore: checks that it is one,
    /// checks the inventory ([`check_inventory`]), verifies `cryo.sums`
    /// ([`verify`](Self::verify)) and every pagemap against its pages
    /// file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let mut dir = Self::open_unverified(path)?;
        // Version refusals come first so that a newer cryo's images are
        // reported as such, not as a manifest problem.
        match dir.read_single::<InventoryEntry>(names::INVENTORY, Kind::Inventory) {
            Ok(inv) => {
                check_inventory(&inv)?;
                dir.verify()?;
                dir.inventory = Some(inv);
            }
            Err(e) => {
                dir.verify()?;
                return Err(e);
            }
        }
        Ok(dir)
    }

    /// Opens an image directory without reading anything but its
    /// listing: the directory must exist, be non-empty and hold
    /// `inventory.img`.
    pub fn open_unverified(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        match fs::metadata(&path) {
            Ok(m) if !m.is_dir() => return Err(Error::NotDir { path }),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::NoDir { path }),
            Err(e) => return Err(Error::io("stat", &path, e)),
        }
        let mut it = fs::read_dir(&path).map_err(|e| Error::io("read directory", &path, e))?;
        if it.next().is_none() {
            return Err(Error::EmptyDir { path });
        }
        if !path.join(names::INVENTORY).exists() {
            return Err(Error::NotImageDir { path });
        }
        Ok(ImageDir {
            path,
            sums: Mutex::new(BTreeMap::new()),
            inventory: None,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checked inventory (set by [`open`](Self::open)).
    pub fn inventory(&self) -> Option<&InventoryEntry> {
        self.inventory.as_ref()
    }

    /// Full path of the file `name` (a plain file name, no slashes).
    pub fn file_path(&self, name: &str) -> Result<PathBuf> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::BadName { name: name.to_string() });
        }
        Ok(self.path.join(name))
    }

    /// True if `name` exists in the directory.
    pub fn exists(&self, name: &str) -> bool {
        self.file_path(name).map(|p| p.exists()).unwrap_or(false)
    }

    /// Names of the regular files in the directory, sorted.
    pub fn files(&self) -> Result<Vec<String>> {
        let rd = fs::read_dir(&self.path).map_err(|e| Error::io("read directory", &self.path, e))?;
        let mut v = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("read directory", &self.path, e))?;
            let is_file = ent.file_type().map(|t| t.is_file()).unwrap_or(false);
            if let (true, Some(n)) = (is_file, ent.file_name().to_str()) {
                v.push(n.to_string());
            }
        }
        v.sort();
        Ok(v)
    }

    fn record(&self, name: &str, bytes: &[u8]) {
        let sum = FileSum {
            crc: crc32fast::hash(bytes),
            size: bytes.len() as u64,
        };
        self.sums
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), sum);
    }

    /// Writes `bytes` as `name` (mode 0600) and records its checksum for
    /// the manifest. Use for protobuf images only, not for raw pages.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.file_path(name)?;
        let mut f = create_0600(&path)?;
        f.write_all(bytes).map_err(|e| Error::io("write", &path, e))?;
        self.record(name, bytes);
        Ok(())
    }

    /// Writes a finished [`ImageWriter`] as `name`.
    pub fn save(&self, name: &str, w: ImageWriter) -> Result<()> {
        self.write_bytes(name, w.bytes())
    }

    /// Writes an image of `kind` holding `entries` (one element for
    /// single-entry images).
    pub fn write_image<M: Message>(&self, name: &str, kind: Kind, entries: &[M]) -> Result<()> {
        let mut w = ImageWriter::new(kind);
        for m in entries {
            w.write_entry(m)?;
        }
        self.save(name, w)
    }

    /// Writes `pagemap-<pid>.img`: the head, then the entries. Build the
    /// entries with [`super::pages::new_entry`] so both count fields are set.
    pub fn write_pagemap(&self, name: &str, head: &PagemapHead, entries: &[PagemapEntry]) -> Result<()> {
        let mut w = ImageWriter::new(Kind::Pagemap);
        w.write_entry(head)?;
        for e in entries {
            w.write_entry(e)?;
        }
        self.save(name, w)
    }

    /// Writes `pipes-data.img`: each entry followed by its data. The
    /// entry's `bytes` field is set from the data length.
    pub fn write_pipes_data(&self, name: &str, items: &[(PipeDataEntry, &[u8])]) -> Result<()> {
        let mut w = ImageWriter::new(Kind::PipesData);
        for (e, data) in items {
            let mut e = *e;
            e.bytes = data.len() as u32;
            w.write_entry(&e)?;
            w.write_raw(data);
        }
        self.save(name, w)
    }

    /// Reads a whole file.
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.file_path(name)?;
        fs::read(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::Missing { path: path.clone() }
            } else {
                Error::io("read", &path, e)
            }
        })
    }

    fn display(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    /// Reads every entry of an image of `kind`.
    pub fn read_image<M: Message + Default>(&self, name: &str, kind: Kind) -> Result<Vec<M>> {
        let data = self.read_bytes(name)?;
        ImageReader::new(self.display(name), &data, kind)?.read_all()
    }

    /// Reads a single-entry image (exactly one entry).
    pub fn read_single<M: Message + Default>(&self, name: &str, kind: Kind) -> Result<M> {
        let data = self.read_bytes(name)?;
        ImageReader::new(self.display(name), &data, kind)?.read_single()
    }

    /// Reads a one-or-EOF image (CRIU's semantics for fs and mm): `None`
    /// if the file is absent or holds no entry, the entry if it holds
    /// exactly one.
    pub fn read_single_opt<M: Message + Default>(&self, name: &str, kind: Kind) -> Result<Option<M>> {
        let data = match self.read_bytes(name) {
            Ok(d) => d,
            Err(Error::Missing { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut r = ImageReader::new(self.display(name), &data, kind)?;
        let first = r.next_entry()?;
        if first.is_some() && !r.at_eof() {
            return Err(Error::EntryCount {
                file: self.display(name),
                found: 1 + r.read_all::<M>()?.len(),
            });
        }
        Ok(first)
    }

    /// Reads `pagemap-<pid>.img`: its head and entries.
    pub fn read_pagemap(&self, name: &str) -> Result<(PagemapHead, Vec<PagemapEntry>)> {
        let data = self.read_bytes(name)?;
        let mut r = ImageReader::new(self.display(name), &data, Kind::Pagemap)?;
        let head: PagemapHead = r.read_one()?;
        Ok((head, r.read_all()?))
    }

    /// Reads `pagemap-<pid>.img` and checks it against the size of its
    /// `pages-N.img`.
    pub fn pagemap_index(&self, pid: u32) -> Result<PagemapIndex> {
        self.pagemap_index_of(&names::pagemap(pid))
    }

    fn pagemap_index_of(&self, name: &str) -> Result<PagemapIndex> {
        let (head, entries) = self.read_pagemap(name)?;
        let idx = PagemapIndex::build(&self.display(name), &head, &entries)?;
        let pages = self.file_path(&names::pages(head.pages_id))?;
        let size = match fs::metadata(&pages) {
            Ok(m) => m.len(),
            // No pages file at all is fine when nothing is present.
            Err(e) if e.kind() == ErrorKind::NotFound && idx.pages_bytes == 0 => 0,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::Missing { path: pages }),
            Err(e) => return Err(Error::io("stat", &pages, e)),
        };
        idx.check_size(size)?;
        Ok(idx)
    }

    /// Reads `pipes-data.img`: each entry with the bytes that follow it.
    pub fn read_pipes_data(&self, name: &str) -> Result<Vec<(PipeDataEntry, Vec<u8>)>> {
        let data = self.read_bytes(name)?;
        let mut r = ImageReader::new(self.display(name), &data, Kind::PipesData)?;
        let mut v = Vec::new();
        while let Some(e) = r.next_entry::<PipeDataEntry>()? {
            let bytes = r.read_raw(e.bytes as usize)?.to_vec();
            v.push((e, bytes));
        }
        Ok(v)
    }

    /// Creates a raw file (pages) with mode 0600. Not in the manifest.
    pub fn create_raw(&self, name: &str) -> Result<File> {
        create_0600(&self.file_path(name)?)
    }

    /// Opens a raw file for reading.
    pub fn open_raw(&self, name: &str) -> Result<File> {
        let path = self.file_path(name)?;
        File::open(&path).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::Missing { path: path.clone() }
            } else {
                Error::io("open", &path, e)
            }
        })
    }

    /// Checksums recorded so far (by name).
    pub fn sums(&self) -> BTreeMap<String, FileSum> {
        self.sums.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes `cryo.sums` for every image written through this
    /// `ImageDir`. Call once at the very end of a dump.
    pub fn finish_manifest(&self) -> Result<()> {
        let mut body = String::new();
        for (name, s) in self.sums() {
            body.push_str(&format!("{:08x} {} {}\n", s.crc, s.size, name));
        }
        let text = format!("{body}# crc32 {:08x}\n", manifest_body_crc(&body));
        let tmp = self.file_path(".cryo.sums.tmp")?;
        let dst = self.file_path(names::MANIFEST)?;
        let mut f = create_0600(&tmp)?;
        f.write_all(text.as_bytes()).map_err(|e| Error::io("write", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename", &dst, e))
    }

    /// Parses `cryo.sums`; `None` if the directory has none.
    pub fn read_manifest(&self) -> Result<Option<BTreeMap<String, FileSum>>> {
        let path = self.file_path(names::MANIFEST)?;
        let text = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let file = path.display().to_string();
        let bad = |line: usize| Error::BadManifest {
            file: file.clone(),
            line,
        };
        let text = String::from_utf8(text).map_err(|_| bad(1))?;
        let mut map = BTreeMap::new();
        let mut body_len = 0usize;
        let mut sealed = false;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            let lineno = i + 1;
            if sealed || !line.ends_with('\n') {
                return Err(bad(lineno));
            }
            let l = &line[..line.len() - 1];
            if let Some(hex) = l.strip_prefix("# crc32 ") {
                let want = u32::from_str_radix(hex, 16).map_err(|_| bad(lineno))?;
                if manifest_body_crc(&text[..body_len]) != want {
                    return Err(bad(lineno));
                }
                sealed = true;
                continue;
            }
            let mut parts = l.splitn(3, ' ');
            let (Some(crc), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad(lineno));
            };
            let crc = u32::from_str_radix(crc, 16).map_err(|_| bad(lineno))?;
            let size = size.parse::<u64>().map_err(|_| bad(lineno))?;
            if self.file_path(name).is_err() {
                return Err(bad(lineno));
            }
            map.insert(name.to_string(), FileSum { crc, size });
            body_len += line.len();
        }
        if !sealed {
            return Err(bad(text.lines().count() + 1));
        }
        Ok(Some(map))
    }

    /// Checks every file listed in `cryo.sums` (missing, truncated,
    /// corrupted) and every `pagemap-<pid>.img` against the size of its
    /// pages file. Returns false when there is no manifest (a CRIU-made
    /// directory); then only the pagemaps are checked.
    pub fn verify(&self) -> Result<bool> {
        let manifest = self.read_manifest()?;
        if let Some(m) = &manifest {
            for (name, want) in m {
                let file = self.display(name);
                let data = match fs::read(self.file_path(name)?) {
                    Ok(d) => d,
                    Err(e) if e.kind() == ErrorKind::NotFound => return Err(Error::ManifestMissing { file }),
                    Err(e) => return Err(Error::io("read", &file, e)),
                };
                let size = data.len() as u64;
                if size < want.size {
                    return Err(Error::ManifestTruncated {
                        file,
                        size,
                        expected: want.size,
                    });
                }
                if size > want.size {
                    return Err(Error::ManifestGrown {
                        file,
                        size,
                        expected: want.size,
                    });
                }
                let crc = crc32fast::hash(&data);
                if crc != want.crc {
                    return Err(Error::Corrupted {
                        file,
                        crc,
                        expected: want.crc,
                    });
                }
            }
        } else {
            tracing::warn!(
                dir = %self.path.display(),
                "no cryo.sums in the image directory (made by CRIU?): image integrity not checked"
            );
        }
        for name in self.files()? {
            if names::pagemap_pid(&name).is_some() {
                self.pagemap_index_of(&name)?;
            }
        }
        Ok(manifest.is_some())
    }
}

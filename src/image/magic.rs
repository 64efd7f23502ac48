//! Image magics and the table of image kinds cryo reads and writes.
//!
//! Values are CRIU's (image-format.md Appendix A). Every ordinary image
//! starts with [`IMG_COMMON_MAGIC`] and then its own magic; `stats-*`
//! files start with [`IMG_SERVICE_MAGIC`]; `inventory.img` has only its
//! own magic; raw files (`pages-N.img`) have no header at all.

/// First u32 of every ordinary protobuf image except inventory.img.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// First u32 of service files (stats-dump, stats-restore).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// What precedes the entries of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Header {
    /// Only the image's own magic (inventory.img).
    MagicOnly,
    /// IMG_COMMON_MAGIC, then the image's magic.
    Common,
    /// IMG_SERVICE_MAGIC, then the image's magic.
    Service,
}

impl Header {
    /// Header length in bytes.
    pub const fn size(self) -> usize {
        match self {
            Header::MagicOnly => 4,
            Header::Common | Header::Service => 8,
        }
    }
}

/// Every protobuf image kind cryo writes or reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Inventory,
    Pstree,
    Core,
    Ids,
    Mm,
    Pagemap,
    Fdinfo,
    Files,
    Fs,
    PipesData,
    TtyInfo,
    TtyData,
    Seccomp,
    Timens,
    Stats,
    FifoData,
    RemapFpath,
    GhostFile,
    SkQueues,
    MemfdInode,
    FileLocks,
    Utsns,
    Mnts,
    IpcnsShm,
    IpcnsSem,
    IpcnsMsg,
    TcpStream,
}

impl Kind {
    /// All kinds, in table order.
    pub const ALL: [Kind; 27] = [
        Kind::Inventory,
        Kind::Pstree,
        Kind::Core,
        Kind::Ids,
        Kind::Mm,
        Kind::Pagemap,
        Kind::Fdinfo,
        Kind::Files,
        Kind::Fs,
        Kind::PipesData,
        Kind::TtyInfo,
        Kind::TtyData,
        Kind::Seccomp,
        Kind::Timens,
        Kind::Stats,
        Kind::FifoData,
        Kind::RemapFpath,
        Kind::GhostFile,
        Kind::SkQueues,
        Kind::MemfdInode,
        Kind::FileLocks,
        Kind::Utsns,
        Kind::Mnts,
        Kind::IpcnsShm,
        Kind::IpcnsSem,
        Kind::IpcnsMsg,
        Kind::TcpStream,
    ];

    /// The image's own magic (the second u32 for common/service headers).
    pub const fn magic(self) -> u32 {
        match self {
            Kind::Inventory => 0x5831_3116,
            Kind::Pstree => 0x5027_3030,
            Kind::Core => 0x5505_3847,
            Kind::Ids => 0x5443_2030,
            Kind::Mm => 0x5749_2820,
            Kind::Pagemap => 0x5608_4025,
            Kind::Fdinfo => 0x5621_3732,
            Kind::Files => 0x5630_3138,
            Kind::Fs => 0x5140_3912,
            Kind::PipesData => 0x5645_3709,
            Kind::TtyInfo => 0x5945_3036,
            Kind::TtyData => 0x5941_3026,
            Kind::Seccomp => 0x6441_3049,
            Kind::Timens => 0x4311_4433,
            Kind::Stats => 0x5709_3306,
            Kind::FifoData => 0x5933_3054,
            Kind::RemapFpath => 0x5913_3954,
            Kind::GhostFile => 0x5258_3605,
            Kind::SkQueues => 0x5626_4026,
            Kind::MemfdInode => 0x4845_3499,
            Kind::FileLocks => 0x5432_3616,
            Kind::Utsns => 0x5447_3203,
            Kind::Mnts => 0x5556_3928,
            Kind::IpcnsShm => 0x4628_3044,
            Kind::IpcnsSem => 0x5957_3019,
            Kind::IpcnsMsg => 0x5545_3737,
            Kind::TcpStream => 0x5146_5506,
        }
    }

    /// The header layout of this kind.
    pub const fn header(self) -> Header {
        match self {
            Kind::Inventory => Header::MagicOnly,
            Kind::Stats => Header::Service,
            _ => Header::Common,
        }
    }

    /// The header bytes as written on disk.
    pub fn header_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8);
        match self.header() {
            Header::MagicOnly => {}
            Header::Common => v.extend_from_slice(&IMG_COMMON_MAGIC.to_le_bytes()),
            Header::Service => v.extend_from_slice(&IMG_SERVICE_MAGIC.to_le_bytes()),
        }
        v.extend_from_slice(&self.magic().to_le_bytes());
        v
    }

    /// crit's name for the magic ("PSTREE", "PIPES_DATA", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Inventory => "INVENTORY",
            Kind::Pstree => "PSTREE",
            Kind::Core => "CORE",
            Kind::Ids => "IDS",
            Kind::Mm => "MM",
            Kind::Pagemap => "PAGEMAP",
            Kind::Fdinfo => "FDINFO",
            Kind::Files => "FILES",
            Kind::Fs => "FS",
            Kind::PipesData => "PIPES_DATA",
            Kind::TtyInfo => "TTY_INFO",
            Kind::TtyData => "TTY_DATA",
            Kind::Seccomp => "SECCOMP",
            Kind::Timens => "TIMENS",
            Kind::Stats => "STATS",
            Kind::FifoData => "FIFO_DATA",
            Kind::RemapFpath => "REMAP_FPATH",
            Kind::GhostFile => "GHOST_FILE",
            Kind::SkQueues => "SK_QUEUES",
            Kind::MemfdInode => "MEMFD_INODE",
            Kind::FileLocks => "FILE_LOCKS",
            Kind::Utsns => "UTSNS",
            Kind::Mnts => "MNTS",
            Kind::IpcnsShm => "IPCNS_SHM",
            Kind::IpcnsSem => "IPCNS_SEM",
            Kind::IpcnsMsg => "IPCNS_MSG",
            Kind::TcpStream => "TCP_STREAM",
        }
    }

    /// Protobuf message name (in package `cryo.images`) of the entries.
    /// For PAGEMAP this is the type of entries after the first
    /// (`pagemap_head`); for GHOST_FILE the type of the first entry (the
    /// chunks that may follow are `ghost_chunk_entry`).
    pub const fn message(self) -> &'static str {
        match self {
            Kind::Inventory => "inventory_entry",
            Kind::Pstree => "pstree_entry",
            Kind::Core => "core_entry",
            Kind::Ids => "task_kobj_ids_entry",
            Kind::Mm => "mm_entry",
            Kind::Pagemap => "pagemap_entry",
            Kind::Fdinfo => "fdinfo_entry",
            Kind::Files => "file_entry",
            Kind::Fs => "fs_entry",
            Kind::PipesData => "pipe_data_entry",
            Kind::TtyInfo => "tty_info_entry",
            Kind::TtyData => "tty_data_entry",
            Kind::Seccomp => "seccomp_entry",
            Kind::Timens => "timens_entry",
            Kind::Stats => "stats_entry",
            Kind::FifoData => "pipe_data_entry",
            Kind::RemapFpath => "remap_file_path_entry",
            Kind::GhostFile => "ghost_file_entry",
            Kind::SkQueues => "sk_packet_entry",
            Kind::MemfdInode => "memfd_inode_entry",
            Kind::FileLocks => "file_lock_entry",
            Kind::Utsns => "utsns_entry",
            Kind::Mnts => "mnt_entry",
            Kind::IpcnsShm => "ipc_shm_entry",
            Kind::IpcnsSem => "ipc_sem_entry",
            Kind::IpcnsMsg => "ipc_msg_entry",
            Kind::TcpStream => "tcp_stream_entry",
        }
    }

    /// The kind whose own magic is `magic`.
    pub fn from_magic(magic: u32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.magic() == magic)
    }

    /// Identifies a file by its first eight bytes (`first`, `second` are
    /// the first two little-endian u32s; `second` is ignored for
    /// inventory). Lenient like crit: either prefix magic is accepted
    /// before any kind.
    pub fn detect(first: u32, second: Option<u32>) -> Option<Kind> {
        if first == Kind::Inventory.magic() {
            return Some(Kind::Inventory);
        }
        if first == IMG_COMMON_MAGIC || first == IMG_SERVICE_MAGIC {
            return second.and_then(Kind::from_magic).filter(|k| *k != Kind::Inventory);
        }
        None
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// CRIU image magics that cryo recognises by name but does not decode
/// (so `cryo show` on a CRIU-made directory can say what a file is).
pub const FOREIGN_MAGICS: &[(&str, u32)] = &[
    ("VMAS", 0x5412_3737),
    ("PIPES", 0x5651_3555),
    ("FIFO", 0x5836_4939),
    ("SIGACT", 0x5534_4201),
    ("UNIXSK", 0x5437_3943),
    ("INETSK", 0x5644_3851),
    ("PACKETSK", 0x6045_4618),
    ("ITIMERS", 0x5746_4056),
    ("POSIX_TIMERS", 0x5260_3957),
    ("CREDS", 0x5402_3547),
    ("IPC_VAR", 0x5311_5007),
    ("REG_FILES", 0x5036_3636),
    ("EXT_FILES", 0x5925_5641),
    ("EVENTFD_FILE", 0x4452_3722),
    ("EVENTPOLL_FILE", 0x4502_3858),
    ("EVENTPOLL_TFD", 0x4443_3746),
    ("SIGNALFD", 0x5732_3820),
    ("INOTIFY_FILE", 0x4842_4431),
    ("INOTIFY_WD", 0x5456_2009),
    ("NETDEV", 0x5737_3951),
    ("NETNS", 0x5593_3752),
    ("TTY_FILES", 0x5943_3025),
    ("RLIMIT", 0x5711_3925),
    ("FANOTIFY_FILE", 0x5509_6122),
    ("FANOTIFY_MARK", 0x5650_6035),
    ("SIGNAL", 0x5925_5647),
    ("NETLINK_SK", 0x5800_5614),
    ("NS_FILES", 0x6139_4011),
    ("TUNFILE", 0x5714_3751),
    ("CGROUP", 0x5938_3330),
    ("TIMERFD", 0x5049_3712),
    ("CPUINFO", 0x6140_4013),
    ("USERNS", 0x5547_4906),
    ("BINFMT_MISC", 0x6734_3323),
    ("AUTOFS", 0x4935_3943),
    ("PIDNS", 0x6115_7326),
    ("BPFMAP_FILE", 0x5750_6142),
    ("BPFMAP_DATA", 0x6432_4033),
    ("APPARMOR", 0x5942_3047),
    ("PIDFD", 0x5443_5556),
    ("IRMAP_CACHE", 0x5700_4059),
];

/// crit's name of a CRIU magic cryo does not decode.
pub fn foreign_name(magic: u32) -> Option<&'static str> {
    FOREIGN_MAGICS.iter().find(|(_, m)| *m == magic).map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_unique_and_match_the_doc_bytes() {
        for a in Kind::ALL {
            for b in Kind::ALL {
                if a != b {
                    assert_ne!(a.magic(), b.magic(), "{a} and {b}");
                }
            }
            assert!(foreign_name(a.magic()).is_none(), "{a} in foreign table");
        }
        // Hex from image-format.md §5.6.
        assert_eq!(
            Kind::Pstree.header_bytes(),
            [0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50]
        );
        assert_eq!(
            Kind::Stats.header_bytes(),
            [0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57]
        );
        assert_eq!(Kind::Inventory.header_bytes(), [0x16, 0x31, 0x31, 0x58]);
    }

    #[test]
    fn detect_by_magic() {
        assert_eq!(Kind::detect(0x5831_3116, None), Some(Kind::Inventory));
        assert_eq!(Kind::detect(IMG_COMMON_MAGIC, Some(0x5505_3847)), Some(Kind::Core));
        assert_eq!(Kind::detect(IMG_SERVICE_MAGIC, Some(0x5709_3306)), Some(Kind::Stats));
        assert_eq!(Kind::detect(IMG_COMMON_MAGIC, Some(0x5831_3116)), None);
        assert_eq!(Kind::detect(0x08ec_8348, Some(0)), None);
    }
}

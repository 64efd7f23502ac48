//! Build script: two products land in OUT_DIR.
//!
//! 1. The image schemas in `proto/*.proto` are compiled with protox (a
//!    pure-Rust protobuf compiler, so no `protoc` is needed on the build
//!    machine) into prost code (`cryo.images.rs`) and a serialized
//!    FileDescriptorSet (`images.fds`) that `cryo show` uses to render
//!    any image as JSON.
//! 2. The restorer blob (`restorer/src/blob.rs`) is compiled with the
//!    installed rustc for the host target as a static PIE with no
//!    relocations, flattened into `blob.bin`, and its entry offset written
//!    to `blob_meta.rs` (recipe: kernel-mechanics.md section 9).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    build_protos(&root, &out);
    build_blob(&root, &out);
}

fn build_protos(root: &Path, out: &Path) {
    let proto_dir = root.join("proto");
    println!("cargo:rerun-if-changed={}", proto_dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&proto_dir)
        .expect("read proto/")
        .map(|e| e.expect("proto dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&proto_dir]).expect("compile proto/*.proto");
    let bytes = prost::Message::encode_to_vec(&fds);
    fs::write(out.join("images.fds"), bytes).expect("write images.fds");
    let mut cfg = prost_build::Config::new();
    cfg.out_dir(out);
    cfg.compile_fds(fds).expect("generate prost code");
}

fn build_blob(root: &Path, out: &Path) {
    let src = root.join("restorer/src/blob.rs");
    let abi = root.join("restorer/src/abi.rs");
    let ld = root.join("restorer/blob.ld");
    for p in [&src, &abi, &ld] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let elf = out.join("restorer.elf");
    let mut cmd = Command::new(rustc);
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .args([
            "--edition=2021",
            "--crate-type=bin",
            "--crate-name=restorer_blob",
            "--target=x86_64-unknown-linux-gnu",
            "-Copt-level=s",
            "-Cpanic=abort",
            "-Crelocation-model=pie",
            "-Crelro-level=off",
            "-Ccodegen-units=1",
            "-Cdebuginfo=0",
            "-Cdebug-assertions=off",
            "-Coverflow-checks=off",
            "-Ctarget-feature=+crt-static",
            "-Clink-arg=-nostartfiles",
            "-Clink-arg=-nostdlib",
            "-Clink-arg=-Wl,--no-dynamic-linker",
            "-Clink-arg=-Wl,--build-id=none",
            "-Clink-arg=-Wl,-z,noexecstack",
            "-Clink-arg=-Wl,--gc-sections",
        ])
        .arg(format!("-Clink-arg=-Wl,-T,{}", ld.display()))
        .arg("-o")
        .arg(&elf)
        .arg(&src);
    let st = cmd.status().expect("run rustc for the restorer blob");
    assert!(st.success(), "building the restorer blob failed");
    let image = fs::read(&elf).expect("read restorer.elf");
    let flat = flatten(&image);
    fs::write(out.join("blob.bin"), &flat.bytes).expect("write blob.bin");
    fs::write(
        out.join("blob_meta.rs"),
        format!(
            "/// Offset of `blob_entry` in the flat blob.\npub const BLOB_ENTRY: usize = {};\n",
            flat.entry
        ),
    )
    .expect("write blob_meta.rs");
}

struct Flat {
    bytes: Vec<u8>,
    entry: usize,
}

fn u16_at(b: &[u8], o: usize) -> usize {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize
}
fn u32_at(b: &[u8], o: usize) -> usize {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize
}
fn u64_at(b: &[u8], o: usize) -> usize {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize
}

/// Places every PT_LOAD at its vaddr in a zeroed buffer and checks that
/// the image needs no relocations (no DT_RELA/DT_RELR entries, no
/// non-empty .rela.dyn).
fn flatten(elf: &[u8]) -> Flat {
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF", "restorer.elf is not ELF");
    assert_eq!(elf[4], 2, "restorer.elf is not ELF64");
    let entry = u64_at(elf, 24);
    let phoff = u64_at(elf, 32);
    let shoff = u64_at(elf, 40);
    let phentsize = u16_at(elf, 54);
    let phnum = u16_at(elf, 56);
    let shentsize = u16_at(elf, 58);
    let shnum = u16_at(elf, 60);
    let shstrndx = u16_at(elf, 62);
    const PT_LOAD: usize = 1;
    const PT_DYNAMIC: usize = 2;
    let mut loads = Vec::new();
    for i in 0..phnum {
        let p = phoff + i * phentsize;
        let ty = u32_at(elf, p);
        let off = u64_at(elf, p + 8);
        let vaddr = u64_at(elf, p + 16);
        let filesz = u64_at(elf, p + 32);
        let memsz = u64_at(elf, p + 40);
        if ty == PT_LOAD {
            loads.push((off, vaddr, filesz, memsz));
        }
        if ty == PT_DYNAMIC {
            // Dynamic entries: (tag, val) pairs. Any relocation tag is fatal.
            let mut d = off;
            while d + 16 <= off + filesz {
                let tag = u64_at(elf, d);
                let val = u64_at(elf, d + 8);
                if tag == 0 {
                    break;
                }
                // DT_RELA=7, DT_RELASZ=8, DT_REL=17, DT_RELSZ=18, DT_RELR=36, DT_RELRSZ=35, DT_JMPREL=23
                if matches!(tag, 8 | 18 | 35) && val != 0 {
                    panic!("restorer blob has dynamic relocations (tag {tag}, size {val})");
                }
                if matches!(tag, 23 | 36) {
                    panic!("restorer blob has relocation table tag {tag}");
                }
                d += 16;
            }
        }
    }
    // Section check: .rela.dyn must be empty.
    if shoff != 0 && shnum != 0 {
        let strtab_off = u64_at(elf, shoff + shstrndx * shentsize + 24);
        for i in 0..shnum {
            let s = shoff + i * shentsize;
            let name_off = u32_at(elf, s);
            let size = u64_at(elf, s + 32);
            let name_start = strtab_off + name_off;
            let name_end = elf[name_start..].iter().position(|&c| c == 0).unwrap() + name_start;
            let name = std::str::from_utf8(&elf[name_start..name_end]).unwrap_or("");
            if (name.starts_with(".rela") || name.starts_with(".relr")) && size != 0 {
                panic!("restorer blob has relocations in {name} ({size} bytes)");
            }
        }
    }
    assert!(!loads.is_empty(), "restorer blob has no PT_LOAD");
    let total = loads.iter().map(|&(_, v, _, m)| v + m).max().unwrap();
    let total = (total + 4095) & !4095;
    let mut bytes = vec![0u8; total];
    for (off, vaddr, filesz, _) in loads {
        bytes[vaddr..vaddr + filesz].copy_from_slice(&elf[off..off + filesz]);
    }
    Flat { bytes, entry }
}

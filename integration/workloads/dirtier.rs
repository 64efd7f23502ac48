//! dirtier: memory that keeps changing while it is migrated, and the
//! timestamp log of the classic downtime experiment.
//!
//! `dirtier --log F --mib N [--hot-mib H] [--hot-ms P] [--ts-ms T] [--corrupt-after-ready]`
//!
//! Holds N MiB of anonymous memory in which every 4 KiB page carries its
//! generation in word 0 and words derived from (page, generation) in the
//! rest; a table on the heap keeps the generation of every page. The first
//! H MiB (default N/8) are rewritten continuously: every 10 ms a slice, so
//! that the whole hot part gets a new generation every P ms (default
//! 1000). Every T ms (default 200) it logs `TS <unix ms>`. On SIGUSR1 it
//! checks every page against itself and against the table: a page from an
//! older pre-copy round, a lost write or a torn page all fail.
//! `--corrupt-after-ready` flips one byte of a cold page before checking.
//! `--discard-every D` also throws away (MADV_DONTNEED) 8 pages of the
//! cold part every D slices, moving on each time, and checks that they
//! read as zeros (a migration must not bring back what the program threw
//! away after a pre-copy round sent it); `--corrupt-discarded` writes a
//! byte into the first discarded page before checking.

use cryo_integration::wl::{self, AnonMap, Args, Log};
use std::time::{SystemTime, UNIX_EPOCH};

const MIB: usize = 1 << 20;
const PAGE_WORDS: usize = 512;
/// Generation of a page thrown away (it must read as zeros).
const DISCARDED: u64 = u64::MAX;

fn word(page: usize, gen: u64, i: usize) -> u64 {
    let mut x = (page as u64) << 32 ^ gen.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 29)
}

fn write_page(words: &mut [u64], page: usize, gen: u64) {
    let w = &mut words[page * PAGE_WORDS..(page + 1) * PAGE_WORDS];
    w[0] = gen;
    for (i, v) in w.iter_mut().enumerate().skip(1) {
        *v = word(page, gen, i);
    }
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()
}

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let mib = args.num("mib", 16) as usize;
    if mib == 0 {
        wl::die("--mib must be at least 1");
    }
    let hot_mib = (args.num("hot-mib", (mib as u64 / 8).max(1)) as usize).min(mib);
    let hot_ms = args.num("hot-ms", 1000).max(10);
    let ts_ms = args.num("ts-ms", 200).max(1) as u128;
    let corrupt = args.flag("corrupt-after-ready");
    let discard_every = args.num("discard-every", 0);
    let corrupt_discarded = args.flag("corrupt-discarded");
    wl::install_usr1();

    let pages = mib * MIB / 4096;
    let hot = hot_mib * MIB / 4096;
    let mut map = AnonMap::new(mib * MIB);
    let mut gens = vec![0u64; pages];
    {
        let w = map.words_mut();
        for p in 0..pages {
            write_page(w, p, 0);
        }
    }
    // Pages per 10 ms slice so the hot part turns over every hot_ms.
    let per_slice = (hot * 10).div_ceil(hot_ms as usize).max(1);
    let mut cursor = 0usize;
    let mut slices = 0u64;
    let mut last_ts = 0u128;
    log.ready();
    while !wl::usr1_seen() {
        let t = now_ms();
        if t >= last_ts + ts_ms {
            log.line(&format!("TS {t}"));
            last_ts = t;
        }
        let w = map.words_mut();
        for _ in 0..per_slice {
            let p = cursor;
            let g = gens[p] + 1;
            write_page(w, p, g);
            gens[p] = g;
            cursor = (cursor + 1) % hot;
        }
        slices += 1;
        if discard_every > 0 && slices.is_multiple_of(discard_every) && pages >= hot + 8 {
            // The cold part, 8 pages at a time, wrapping around.
            let first = hot + ((slices / discard_every) as usize * 8) % (pages - hot - 7);
            map.discard(first * 4096, 8 * 4096);
            for g in &mut gens[first..first + 8] {
                *g = DISCARDED;
            }
        }
        wl::sleep_ms(10);
    }

    if corrupt {
        let b = &mut map.bytes_mut()[(pages - 1) * 4096 + 99];
        *b ^= 0x20;
    }
    if corrupt_discarded {
        if let Some(p) = gens.iter().position(|&g| g == DISCARDED) {
            map.bytes_mut()[p * 4096 + 123] = 1;
        }
    }
    let mut problems = Vec::new();
    let w = map.words();
    let mut rewritten = 0u64;
    let mut discarded = 0u64;
    for (p, &want) in gens.iter().enumerate() {
        let page = &w[p * PAGE_WORDS..(p + 1) * PAGE_WORDS];
        let g = page[0];
        if want == DISCARDED {
            discarded += 1;
            if let Some(i) = page.iter().position(|&x| x != 0) {
                problems.push(format!("page {p}: discarded, but word {i} is {:#x}", page[i]));
            }
            if problems.len() > 5 {
                break;
            }
            continue;
        }
        if g != want {
            problems.push(format!("page {p}: generation {g}, table says {want}"));
        } else if let Some(i) = (1..PAGE_WORDS).find(|&i| page[i] != word(p, g, i)) {
            problems.push(format!("page {p} (generation {g}): word {i} is wrong"));
        }
        rewritten += g;
        if problems.len() > 5 {
            break;
        }
    }
    log.verdict(
        &problems,
        &format!("mib={mib} hot_mib={hot_mib} slices={slices} page_writes={rewritten} discarded={discarded}"),
    );
}

//! memsum: anonymous memory, heap and stack contents survive.
//!
//! `memsum --log F --mib N [--word W [--expect-word E]] [--corrupt-after-ready]`
//!
//! Fills N MiB of mmap'ed anonymous memory, a heap vector and a stack
//! array with seeded pseudo-random patterns and keeps their checksums; then
//! idles, bumping a counter (kept twice, in a static and on the heap) every
//! 10 ms. With `--word W` it also keeps the string W in a page of its own
//! (used for the `sed` trick on pages images: the restored process must see
//! E, which defaults to W). On SIGUSR1 it recomputes every checksum, checks
//! that the counter only went up and that both copies agree, and compares
//! the word. `--corrupt-after-ready` flips one byte of the mapping just
//! before verifying, to prove the check can fail.

use cryo_integration::wl::{self, AnonMap, Args, Log};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

const MIB: usize = 1 << 20;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let mib = args.num("mib", 16) as usize;
    if mib == 0 {
        wl::die("--mib must be at least 1");
    }
    let word = args.value("word");
    let expect_word = args.value("expect-word").or_else(|| word.clone());
    let corrupt = args.flag("corrupt-after-ready");
    wl::install_usr1();

    // Anonymous memory: one seed and one checksum per MiB.
    let mut map = AnonMap::new(mib * MIB);
    let mut sums = Vec::with_capacity(mib);
    for (i, chunk) in map.words_mut().chunks_mut(MIB / 8).enumerate() {
        wl::fill(chunk, 0x1000 + i as u64);
        sums.push(wl::checksum(chunk));
    }

    // Heap.
    let mut heap = vec![0u64; 64 * 1024];
    wl::fill(&mut heap, 0x2000);
    let heap_sum = wl::checksum(&heap);

    // Stack.
    let mut stack = [0u64; 1024];
    wl::fill(&mut stack, 0x3000);
    let stack = black_box(stack);
    let stack_sum = wl::checksum(&stack);

    // The word, alone at the start of its own page.
    let mut word_page = AnonMap::new(4096);
    if let Some(w) = &word {
        if w.len() >= 4096 {
            wl::die("--word too long");
        }
        word_page.bytes_mut()[..w.len()].copy_from_slice(w.as_bytes());
    }
    let word_len = word.as_ref().map_or(0, |w| w.len());

    let mut shadow = Box::new(0u64);
    let at_ready = COUNTER.load(Ordering::SeqCst);
    log.ready();

    while !wl::usr1_seen() {
        wl::sleep_ms(10);
        COUNTER.fetch_add(1, Ordering::SeqCst);
        *shadow += 1;
        black_box(&mut *shadow);
    }

    if corrupt {
        let b = &mut map.bytes_mut()[mib * MIB / 2 + 123];
        *b ^= 0x40;
    }

    let mut problems = Vec::new();
    for (i, chunk) in map.words().chunks(MIB / 8).enumerate() {
        let s = wl::checksum(chunk);
        if s != sums[i] {
            problems.push(format!(
                "anon MiB {i} at {:#x}: checksum {s:#x} != {:#x}",
                map.addr() + i * MIB,
                sums[i]
            ));
        }
    }
    let s = wl::checksum(&heap);
    if s != heap_sum {
        problems.push(format!("heap checksum {s:#x} != {heap_sum:#x}"));
    }
    let s = wl::checksum(black_box(&stack));
    if s != stack_sum {
        problems.push(format!("stack checksum {s:#x} != {stack_sum:#x}"));
    }
    let now = COUNTER.load(Ordering::SeqCst);
    if now < at_ready {
        problems.push(format!("counter went down: {now} < {at_ready}"));
    }
    if now != *shadow {
        problems.push(format!("counter {now} != heap copy {}", *shadow));
    }
    let mut details = format!("mib={mib} counter={now}");
    if let Some(e) = &expect_word {
        let got = String::from_utf8_lossy(&word_page.bytes_mut()[..word_len]).into_owned();
        if got != *e {
            problems.push(format!("word={got} expected {e}"));
        }
        details.push_str(&format!(" word={got}"));
    }
    log.verdict(&problems, &details);
}

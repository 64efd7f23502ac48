//! counter: a process that keeps making progress across a checkpoint.
//!
//! `counter --log F [--interval-ms M]`
//!
//! Writes `READY <pid>`, then `step 0`, `step 1`, ... one line every M ms
//! (default 50), forever. The test checks that after a restore the numbers
//! continue with no gap and no duplicate (the step counter lives in memory,
//! the log on disk). On SIGUSR1 it writes `PASS steps=<n>` and exits 0.

use cryo_integration::wl::{self, Args, Log};

fn main() {
    let args = Args::from_env();
    let log = Log::open(&args.required("log"));
    let interval = args.num("interval-ms", 50);
    wl::install_usr1();
    log.ready();
    let mut n: u64 = 0;
    loop {
        if wl::usr1_seen() {
            log.verdict(&[], &format!("steps={n}"));
        }
        log.line(&format!("step {n}"));
        n += 1;
        wl::sleep_ms(interval);
    }
}

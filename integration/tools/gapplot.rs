//! gapplot: the downtime seen by a workload that logs `TS <unix ms>`
//! every 200 ms (dirtier), and the classic plot of it.
//!
//! `gapplot [--png OUT.png] LABEL=LOG...`
//!
//! For each log prints `LABEL: N timestamps, largest gap G ms (at index
//! I), median gap M ms, downtime D ms`, where the downtime is the largest
//! gap minus the median one (the workload's own period: what the
//! migration added), and with --png draws every series as points
//! (x: timestamp index, y: gap to the previous timestamp in ms; one colour
//! per series in the order given: red, blue, green, orange; grey ticks
//! every 10 indices and every 100 ms; a dashed line at the median gap of
//! the first series + 50 ms, the downtime target). The PNG
//! encoder is the minimal one (zlib stored blocks), written here.

use std::fs;

fn gaps(log: &str) -> Vec<u64> {
    let text = fs::read_to_string(log).unwrap_or_else(|e| panic!("{log}: {e}"));
    let ts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("TS "))
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    ts.windows(2).map(|w| w[1].saturating_sub(w[0])).collect()
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for p in parts {
        for &x in *p {
            c ^= x as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0xedb8_8320 } else { c >> 1 };
            }
        }
    }
    !c
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// An RGB image as PNG bytes (filter 0 rows, zlib stored blocks).
fn png(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity((w * 3 + 1) as usize * h as usize);
    for row in rgb.chunks(w as usize * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let mut blocks = raw.chunks(65535).peekable();
    while let Some(b) = blocks.next() {
        z.push(u8::from(blocks.peek().is_none()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = None;
    if args.first().map(String::as_str) == Some("--png") {
        out = Some(args.get(1).expect("--png OUT").clone());
        args.drain(..2);
    }
    let series: Vec<(String, Vec<u64>)> = args
        .iter()
        .map(|a| {
            let (l, f) = a.split_once('=').expect("LABEL=LOG");
            (l.to_string(), gaps(f))
        })
        .collect();
    for (l, g) in &series {
        let (i, max) = g
            .iter()
            .enumerate()
            .max_by_key(|x| x.1)
            .map_or((0, 0), |(i, m)| (i, *m));
        let mut s = g.clone();
        s.sort_unstable();
        let med = s.get(s.len() / 2).copied().unwrap_or(0);
        println!(
            "{l}: {} timestamps, largest gap {max} ms (at index {}), median gap {med} ms, downtime {} ms",
            g.len() + 1,
            i + 1,
            max.saturating_sub(med)
        );
    }
    let Some(out) = out else { return };
    let (w, h, m) = (900usize, 500usize, 40usize);
    let mut img = vec![255u8; w * h * 3];
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(1);
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .max()
        .unwrap_or(200)
        .max(300)
        .div_ceil(100)
        * 100;
    let base = series.first().map_or(0, |(_, g)| {
        let mut s = g.clone();
        s.sort_unstable();
        s.get(s.len() / 2).copied().unwrap_or(0)
    });
    let px = |i: usize| m + i * (w - 2 * m) / n;
    let py = |v: u64| h - m - (v.min(ymax) as usize * (h - 2 * m) / ymax as usize);
    let put = |img: &mut Vec<u8>, x: usize, y: usize, c: [u8; 3]| {
        if x < w && y < h {
            img[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&c);
        }
    };
    // Axes, ticks, the 50 ms line.
    for x in m..w - m {
        put(&mut img, x, h - m, [0, 0, 0]);
        if (x / 4) % 2 == 0 {
            put(&mut img, x, py(base + 50), [200, 0, 200]);
        }
    }
    for y in m..=h - m {
        put(&mut img, m, y, [0, 0, 0]);
    }
    for v in (100..=ymax).step_by(100) {
        for x in m - 6..m {
            put(&mut img, x, py(v), [0, 0, 0]);
        }
        for x in (m..w - m).step_by(3) {
            put(&mut img, x, py(v), [210, 210, 210]);
        }
    }
    for i in (0..=n).step_by(10) {
        for y in h - m..h - m + 6 {
            put(&mut img, px(i), y, [0, 0, 0]);
        }
    }
    let colours = [[220, 0, 0], [0, 0, 220], [0, 150, 0], [230, 140, 0]];
    for (k, (_, g)) in series.iter().enumerate() {
        let c = colours[k % colours.len()];
        for (i, &v) in g.iter().enumerate() {
            let (x, y) = (px(i + 1), py(v));
            for dx in 0..5 {
                for dy in 0..5 {
                    put(&mut img, x + dx - 2, y + dy - 2, c);
                }
            }
        }
    }
    fs::write(&out, png(w as u32, h as u32, &img)).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!(
        "plot: {out} (x: timestamp index 0..{n}, y: gap 0..{ymax} ms, grid every 100 ms, dashed line at {} ms)",
        base + 50
    );
}

//! gapplot: the downtime seen by a workload that logs `TS <unix ms>`
//! every 200 ms (dirtier), and the classic plot of it.
//!
//! `gapplot [--png OUT.png] [--title TEXT] LABEL=LOG...`
//!
//! For each log prints `LABEL: N timestamps, largest gap G ms (at index
//! I), median gap M ms, downtime D ms`, where the downtime is the largest
//! gap minus the median one (the workload's own period: what the
//! migration added), and with --png draws every series as points
//! (x: timestamp index, y: gap to the previous timestamp in ms; one colour
//! and marker per series in the order given: red square, blue diamond,
//! green triangle, orange cross), with a title (--title, or a default),
//! axis labels, tick numbers, a legend (series names from the LABELs,
//! with each one's largest gap) and a dashed line at the median gap of the
//! first series + 50 ms, the downtime target. The y axis is logarithmic
//! (1-2-5 ticks, said so in its label) when the largest gap is more than
//! 5 times the smallest median, so that 200 ms and 250 ms points stay
//! apart next to a 4 s one; linear otherwise. Text is drawn with the 5x7
//! bitmap font below (designed for this tool). The PNG encoder is the
//! minimal one (zlib stored blocks), written here.

use std::fs;

fn gaps(log: &str) -> Vec<u64> {
    let text = fs::read_to_string(log).unwrap_or_else(|e| fail(&format!("{log}: {e}")));
    let ts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("TS "))
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    ts.windows(2).map(|w| w[1].saturating_sub(w[0])).collect()
}

fn fail(msg: &str) -> ! {
    eprintln!("gapplot: {msg}");
    std::process::exit(2)
}

fn median(g: &[u64]) -> u64 {
    let mut s = g.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(0)
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

/// The font: 5 columns (bit 4 is the leftmost) by 9 rows; rows 0..=6 sit
/// on the baseline (capitals and digits are 7 high, lower case 5 with
/// ascenders of 7), rows 7 and 8 hold descenders. Designed for this tool.
#[rustfmt::skip]
const FONT: &[(char, [u8; 9])] = &[
    (' ', [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0, 0]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0, 0]),
    ('3', [0b11110, 0b00001, 0b00001, 0b01110, 0b00001, 0b00001, 0b11110, 0, 0]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0, 0]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0, 0]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0, 0]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0, 0]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0, 0]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0, 0]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0, 0]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0, 0]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0, 0]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0, 0]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0, 0]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0, 0]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0, 0]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0, 0]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0, 0]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0, 0]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0, 0]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0, 0]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0, 0]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0, 0]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0, 0]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0, 0]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0, 0]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0, 0]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0, 0]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0, 0]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0, 0]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0, 0]),
    ('Y', [0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0, 0]),
    ('a', [0, 0, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0, 0]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0, 0]),
    ('c', [0, 0, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0, 0]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0, 0]),
    ('e', [0, 0, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0, 0]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0, 0]),
    ('g', [0, 0, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0, 0]),
    ('i', [0b00100, 0, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0]),
    ('j', [0b00010, 0, 0b00110, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0, 0]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0]),
    ('m', [0, 0, 0b11010, 0b10101, 0b10101, 0b10101, 0b10101, 0, 0]),
    ('n', [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0, 0]),
    ('o', [0, 0, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0, 0]),
    ('p', [0, 0, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0, 0, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001]),
    ('r', [0, 0, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0, 0]),
    ('s', [0, 0, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0, 0]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0, 0]),
    ('u', [0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0, 0]),
    ('v', [0, 0, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0, 0]),
    ('w', [0, 0, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0, 0]),
    ('x', [0, 0, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0, 0]),
    ('y', [0, 0, 0b10001, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0, 0, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0, 0]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0, 0]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0, 0]),
    ('[', [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0, 0]),
    (']', [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0, 0]),
    (':', [0, 0b01100, 0b01100, 0, 0b01100, 0b01100, 0, 0, 0]),
    ('.', [0, 0, 0, 0, 0, 0b01100, 0b01100, 0, 0]),
    (',', [0, 0, 0, 0, 0, 0b01100, 0b01100, 0b00100, 0b01000]),
    ('-', [0, 0, 0, 0b11111, 0, 0, 0, 0, 0]),
    ('+', [0, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0, 0, 0]),
    ('=', [0, 0, 0b11111, 0, 0b11111, 0, 0, 0, 0]),
    ('/', [0b00001, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b10000, 0, 0]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0, 0]),
    ('_', [0, 0, 0, 0, 0, 0, 0, 0b11111, 0]),
    ('<', [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0, 0]),
    ('>', [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0, 0]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0, 0b00100, 0, 0]),
    ('!', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0, 0b00100, 0, 0]),
    ('\'', [0b00100, 0b00100, 0b01000, 0, 0, 0, 0, 0, 0]),
    ('"', [0b01010, 0b01010, 0, 0, 0, 0, 0, 0, 0]),
    ('#', [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0, 0]),
    ('*', [0, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0, 0, 0]),
];

/// The glyph of `c`; characters the font lacks are drawn as '?'.
fn glyph(c: char) -> &'static [u8; 9] {
    FONT.iter()
        .find(|(k, _)| *k == c)
        .or_else(|| FONT.iter().find(|(k, _)| *k == '?'))
        .map(|(_, g)| g)
        .expect("the font has '?'")
}

/// Glyph cell: 5 columns plus 1 of spacing; 9 rows (7 above the baseline).
const ADVANCE: usize = 6;
const CAP: usize = 7;

fn text_width(s: &str, scale: usize) -> usize {
    (s.chars().count() * ADVANCE).saturating_sub(1) * scale
}

struct Image {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

const BLACK: [u8; 3] = [0, 0, 0];

impl Image {
    fn new(w: usize, h: usize) -> Self {
        Image {
            w,
            h,
            rgb: vec![255; w * h * 3],
        }
    }

    fn put(&mut self, x: isize, y: isize, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let o = (y as usize * self.w + x as usize) * 3;
            self.rgb[o..o + 3].copy_from_slice(&c);
        }
    }

    #[cfg(test)]
    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let o = (y * self.w + x) * 3;
        [self.rgb[o], self.rgb[o + 1], self.rgb[o + 2]]
    }

    /// `s` with its top-left corner at (x, y) (the top of the capitals).
    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
        self.glyphs(s, scale, c, |i, col, row| {
            ((x + i * ADVANCE * scale + col) as isize, (y + row) as isize)
        });
    }

    /// `s` read bottom to top (turned 90 degrees left), starting at
    /// (x, y): the top of its capitals faces x, its first letter is at y.
    fn text_up(&mut self, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
        self.glyphs(s, scale, c, |i, col, row| {
            ((x + row) as isize, y as isize - (i * ADVANCE * scale + col) as isize)
        });
    }

    /// Sets every pixel of every glyph of `s`: `at(i, col, row)` places the
    /// pixel (col, row) of the scaled glyph of the i-th character.
    fn glyphs(&mut self, s: &str, scale: usize, c: [u8; 3], at: impl Fn(usize, usize, usize) -> (isize, isize)) {
        for (i, ch) in s.chars().enumerate() {
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) == 0 {
                        continue;
                    }
                    for d in 0..scale * scale {
                        let (x, y) = at(i, col * scale + d % scale, row * scale + d / scale);
                        self.put(x, y, c);
                    }
                }
            }
        }
    }

    /// The marker of series `k` centred on (x, y).
    fn marker(&mut self, k: usize, x: usize, y: usize, c: [u8; 3]) {
        for dy in -4isize..=4 {
            for dx in -4isize..=4 {
                let on = match k % 4 {
                    0 => dx.abs() <= 3 && dy.abs() <= 3,
                    1 => dx.abs() + dy.abs() <= 4,
                    2 => (-4..=3).contains(&dy) && 2 * dx.abs() <= dy + 4,
                    _ => (dx.abs() - dy.abs()).abs() <= 1 && dx.abs() + dy.abs() != 1,
                };
                if on {
                    self.put(x as isize + dx, y as isize + dy, c);
                }
            }
        }
    }
}

const COLOURS: [[u8; 3]; 4] = [[220, 0, 0], [0, 0, 220], [0, 150, 0], [230, 140, 0]];
const TARGET: [u8; 3] = [200, 0, 200];

/// The 1-2-5 sequence from 1 up.
fn nice() -> impl Iterator<Item = u64> {
    (0..19).flat_map(|e| [1, 2, 5].map(|m| m * 10u64.pow(e)))
}

/// How the y axis maps gaps (ms) to the plot.
#[derive(Debug, PartialEq)]
enum YAxis {
    /// 0..=hi, ticks every `step`.
    Linear { hi: u64, step: u64 },
    /// lo..=hi on a log scale, 1-2-5 ticks; `lo` and `hi` are 1-2-5 values.
    Log { lo: u64, hi: u64 },
}

impl YAxis {
    /// Log when the largest gap is more than 5 times the smallest median
    /// (a full migration next to pre-copy / lazy ones), linear otherwise.
    fn choose(series: &[(String, Vec<u64>)]) -> YAxis {
        let max = series.iter().flat_map(|s| s.1.iter().copied()).max().unwrap_or(200);
        let min_med = series
            .iter()
            .filter(|s| !s.1.is_empty())
            .map(|s| median(&s.1))
            .min()
            .unwrap_or(200);
        if max > 5 * min_med.max(1) {
            let min = series
                .iter()
                .flat_map(|s| s.1.iter().copied())
                .filter(|&v| v > 0)
                .min()
                .unwrap_or(1);
            // Some room under the smallest gap so its points sit above the axis.
            let lo = nice().take_while(|&v| v * 5 <= min * 4).last().unwrap_or(1);
            let hi = nice().find(|&v| v >= max).unwrap_or(u64::MAX).max(lo * 2);
            YAxis::Log { lo, hi }
        } else {
            let max = max.max(300);
            let step = nice().find(|&s| max.div_ceil(s) <= 10).unwrap_or(1);
            YAxis::Linear {
                hi: max.div_ceil(step) * step,
                step,
            }
        }
    }

    /// The fraction of the axis height at which `v` ms sits, in 0..=1.
    fn frac(&self, v: u64) -> f64 {
        match *self {
            YAxis::Linear { hi, .. } => v.min(hi) as f64 / hi as f64,
            YAxis::Log { lo, hi } => {
                let v = v.clamp(lo, hi) as f64;
                (v / lo as f64).ln() / (hi as f64 / lo as f64).ln()
            }
        }
    }

    /// (value, labelled) of every grid line: labelled ticks, and on a log
    /// axis unlabelled 3, 4, 6, 7, 8, 9 x 10^k lines in between.
    fn ticks(&self) -> Vec<(u64, bool)> {
        match *self {
            YAxis::Linear { hi, step } => (0..=hi).step_by(step as usize).map(|v| (v, true)).collect(),
            YAxis::Log { lo, hi } => (0..19)
                .flat_map(|e| (1..10).map(move |m| m * 10u64.pow(e)))
                .take_while(|&v| v <= hi)
                .filter(|&v| v >= lo)
                .map(|v| (v, matches!(v / 10u64.pow(v.ilog10()), 1 | 2 | 5)))
                .collect(),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            YAxis::Linear { .. } => "gap (ms)",
            YAxis::Log { .. } => "gap (ms, log scale)",
        }
    }

    fn describe(&self) -> String {
        match *self {
            YAxis::Linear { hi, step } => format!("y: gap 0..{hi} ms, grid every {step} ms"),
            YAxis::Log { lo, hi } => format!("y: gap {lo}..{hi} ms on a log scale, grid at 1-2-5 x 10^k ms"),
        }
    }
}

/// Layout: the plot area is [L, R] x [T, B]; the legend is right of it.
const W: usize = 1100;
const H: usize = 600;
const L: usize = 110;
const R: usize = 780;
const T: usize = 60;
const B: usize = 520;

const DEFAULT_TITLE: &str = "cryo migrate: gap between 200 ms timestamps";
const X_LABEL: &str = "timestamp index";

/// The x step between labelled ticks for indices 0..=n: 1-2-5, at most 12.
fn x_step(n: usize) -> usize {
    nice().map(|s| s as usize).find(|&s| n / s <= 12).unwrap_or(1)
}

/// The legend's lines about the dashed line (the first series' name inside).
fn target_lines(first: &str, base: u64) -> [String; 3] {
    [
        "downtime target:".to_string(),
        format!("median gap of {first}"),
        format!("+ 50 ms = {} ms", base + 50),
    ]
}

/// Draws the plot; returns it with the y axis used.
fn render(series: &[(String, Vec<u64>)], title: &str) -> (Image, YAxis) {
    let mut img = Image::new(W, H);
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(1);
    let axis = YAxis::choose(series);
    let base = series.first().map_or(0, |(_, g)| median(g));
    let px = |i: usize| L + i * (R - L) / n;
    let py = |v: u64| B - (axis.frac(v) * (B - T) as f64).round() as usize;

    // Title, centred over the whole image.
    img.text(W.saturating_sub(text_width(title, 2)) / 2, 18, title, 2, BLACK);

    // Grid and y ticks.
    for (v, labelled) in axis.ticks() {
        let y = py(v);
        let grey = if labelled { [190, 190, 190] } else { [225, 225, 225] };
        for x in (L..=R).step_by(if labelled { 2 } else { 4 }) {
            img.put(x as isize, y as isize, grey);
        }
        if labelled {
            for x in L - 6..L {
                img.put(x as isize, y as isize, BLACK);
            }
            let s = v.to_string();
            img.text(L - 10 - text_width(&s, 2), y - CAP, &s, 2, BLACK);
        }
    }
    // X ticks.
    let step = x_step(n);
    for i in (0..=n).step_by(step) {
        let x = px(i);
        for y in B..B + 6 {
            img.put(x as isize, y as isize, BLACK);
        }
        for y in (T..B).step_by(4) {
            img.put(x as isize, y as isize, [225, 225, 225]);
        }
        let s = i.to_string();
        img.text(x - text_width(&s, 2) / 2, B + 12, &s, 2, BLACK);
    }
    // Axes and their labels.
    for x in L..=R {
        img.put(x as isize, B as isize, BLACK);
    }
    for y in T..=B {
        img.put(L as isize, y as isize, BLACK);
    }
    img.text((L + R - text_width(X_LABEL, 2)) / 2, B + 44, X_LABEL, 2, BLACK);
    let yl = axis.label();
    img.text_up(18, (T + B + text_width(yl, 2)) / 2, yl, 2, BLACK);

    // The downtime target, dashed.
    let yt = py(base + 50);
    for x in L + 1..=R {
        if (x / 6).is_multiple_of(2) {
            img.put(x as isize, yt as isize, TARGET);
            img.put(x as isize, yt as isize + 1, TARGET);
        }
    }
    // The points.
    for (k, (_, g)) in series.iter().enumerate() {
        for (i, &v) in g.iter().enumerate() {
            img.marker(k, px(i + 1), py(v), COLOURS[k % COLOURS.len()]);
        }
    }

    // The legend.
    let lx = R + 24;
    let mut y = T;
    for (k, (name, g)) in series.iter().enumerate() {
        let c = COLOURS[k % COLOURS.len()];
        img.marker(k, lx + 4, y + CAP, c);
        img.text(lx + 20, y, name, 2, c);
        let max = g.iter().copied().max().unwrap_or(0);
        img.text(lx + 20, y + 22, &format!("largest gap {max} ms"), 2, BLACK);
        y += 52;
    }
    y += 6;
    for x in lx - 2..lx + 12 {
        if ((x + 2 - lx) / 6).is_multiple_of(2) {
            img.put(x as isize, (y + CAP) as isize, TARGET);
            img.put(x as isize, (y + CAP + 1) as isize, TARGET);
        }
    }
    let first = series.first().map_or("", |s| s.0.as_str());
    for line in target_lines(first, base) {
        img.text(lx + 20, y, &line, 2, TARGET);
        y += 22;
    }
    (img, axis)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let (mut out, mut title) = (None, DEFAULT_TITLE.to_string());
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let opt = args.remove(0);
        let val = if args.is_empty() {
            fail(&format!("{opt} needs a value"))
        } else {
            args.remove(0)
        };
        match opt.as_str() {
            "--png" => out = Some(val),
            "--title" => title = val,
            _ => fail(&format!(
                "unknown option {opt} (usage: gapplot [--png OUT.png] [--title TEXT] LABEL=LOG...)"
            )),
        }
    }
    let series: Vec<(String, Vec<u64>)> = args
        .iter()
        .map(|a| {
            let (l, f) = a
                .split_once('=')
                .unwrap_or_else(|| fail(&format!("{a}: expected LABEL=LOG")));
            (l.to_string(), gaps(f))
        })
        .collect();
    for (l, g) in &series {
        let (i, max) = g
            .iter()
            .enumerate()
            .max_by_key(|x| x.1)
            .map_or((0, 0), |(i, m)| (i, *m));
        let med = median(g);
        println!(
            "{l}: {} timestamps, largest gap {max} ms (at index {}), median gap {med} ms, downtime {} ms",
            g.len() + 1,
            i + 1,
            max.saturating_sub(med)
        );
    }
    let Some(out) = out else { return };
    let (img, axis) = render(&series, &title);
    fs::write(&out, png(img.w as u32, img.h as u32, &img.rgb)).unwrap_or_else(|e| fail(&format!("{out}: {e}")));
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(1);
    let base = series.first().map_or(0, |(_, g)| median(g));
    println!(
        "plot: {out} (x: timestamp index 0..{n}, {}, dashed line at {} ms)",
        axis.describe(),
        base + 50
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, g: &[u64]) -> (String, Vec<u64>) {
        (name.to_string(), g.to_vec())
    }

    #[test]
    fn every_fixed_label_has_its_own_glyph() {
        let mut texts = vec![
            DEFAULT_TITLE.to_string(),
            X_LABEL.to_string(),
            "cryo migrate --container, 256 MiB: gap between 200 ms timestamps".to_string(),
            "largest gap 0123456789 ms".to_string(),
            "full precopy lazy postcopy x".to_string(),
        ];
        texts.extend(target_lines("full", 203));
        for a in [YAxis::Linear { hi: 300, step: 50 }, YAxis::Log { lo: 100, hi: 5000 }] {
            texts.push(a.label().to_string());
        }
        for t in &texts {
            for c in t.chars() {
                assert!(FONT.iter().any(|(k, _)| *k == c), "no glyph for {c:?} in {t:?}");
            }
        }
    }

    #[test]
    fn font_has_no_duplicates_and_glyphs_fit_their_cell() {
        for (i, (c, g)) in FONT.iter().enumerate() {
            assert!(FONT[i + 1..].iter().all(|(k, _)| k != c), "{c:?} twice");
            assert!(g.iter().all(|&r| r < 32), "{c:?} wider than 5");
            assert!(*c == ' ' || g.iter().any(|&r| r != 0), "{c:?} is blank");
        }
        // Distinct glyphs for distinct characters (no copy-paste slips).
        for (i, (c, g)) in FONT.iter().enumerate() {
            assert!(
                FONT[i + 1..].iter().all(|(_, h)| h != g),
                "{c:?} looks like another character"
            );
        }
        assert_eq!(glyph('\u{263a}'), glyph('?'));
    }

    #[test]
    fn text_sets_pixels_inside_its_box_only() {
        let mut img = Image::new(60, 30);
        img.text(2, 3, "g1", 2, BLACK);
        let w = text_width("g1", 2);
        assert_eq!(w, 22);
        let mut set = 0;
        for y in 0..30 {
            for x in 0..60 {
                if img.at(x, y) == BLACK {
                    set += 1;
                    assert!((2..2 + w).contains(&x) && (3..3 + 18).contains(&y), "pixel at {x},{y}");
                }
            }
        }
        let bits: u32 = glyph('g').iter().chain(glyph('1')).map(|r| r.count_ones()).sum();
        assert_eq!(set, bits as usize * 4);
    }

    #[test]
    fn log_axis_keeps_200_and_250_apart_next_to_4000() {
        let series = [s("full", &[200, 201, 4000, 199]), s("precopy", &[200, 250, 203])];
        let axis = YAxis::choose(&series);
        assert_eq!(axis, YAxis::Log { lo: 100, hi: 5000 });
        let px = (axis.frac(250) - axis.frac(200)) * (B - T) as f64;
        assert!(px >= 20.0, "200 and 250 ms only {px} px apart");
        assert_eq!(axis.frac(100), 0.0);
        assert_eq!(axis.frac(5000), 1.0);
        let labelled: Vec<u64> = axis.ticks().into_iter().filter(|t| t.1).map(|t| t.0).collect();
        assert_eq!(labelled, [100, 200, 500, 1000, 2000, 5000]);
        // Without the 4 s gap: linear.
        let axis = YAxis::choose(&[s("precopy", &[200, 367, 203])]);
        assert_eq!(axis, YAxis::Linear { hi: 400, step: 50 });
    }

    #[test]
    fn x_ticks_stay_few() {
        assert_eq!(x_step(38), 5);
        assert_eq!(x_step(10), 1);
        assert_eq!(x_step(300), 50);
    }

    #[test]
    fn render_draws_points_in_their_colours() {
        let series = [s("full", &[200, 3000, 200]), s("lazy", &[205, 210, 250])];
        let (img, _) = render(&series, DEFAULT_TITLE);
        let count = |c: [u8; 3]| {
            (0..H)
                .flat_map(|y| (0..W).map(move |x| (x, y)))
                .filter(|&(x, y)| img.at(x, y) == c)
                .count()
        };
        assert!(count(COLOURS[0]) > 3 * 20, "red points and legend");
        assert!(count(COLOURS[1]) > 3 * 10, "blue points and legend");
        assert!(count(TARGET) > 100, "the dashed line");
    }

    #[test]
    fn png_crc_and_layout() {
        assert_eq!(crc32(&[b"IEND"]), 0xae42_6082);
        let p = png(2, 1, &[0; 6]);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&p[p.len() - 12..], b"\0\0\0\0IEND\xae\x42\x60\x82");
    }
}

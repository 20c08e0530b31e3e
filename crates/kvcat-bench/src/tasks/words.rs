//! Random needle keys and values: numbers, `adjective-noun` words and UUIDs, as in RULER's
//! needle generators (which draw the words from wonderwords' lists; these are a fixed list of
//! common English words, so generation needs no data file).

use rand::Rng;

/// Common adjectives.
pub const ADJECTIVES: [&str; 64] = [
    "able", "ancient", "angry", "bitter", "bold", "brave", "bright", "broad", "calm", "cheap",
    "clean", "clever", "cold", "cool", "crisp", "curly", "damp", "dark", "deep", "dry", "eager",
    "early", "empty", "fair", "faint", "fancy", "fast", "fierce", "flat", "fresh", "gentle",
    "giant", "glad", "golden", "grand", "green", "happy", "heavy", "hollow", "huge", "jolly",
    "kind", "large", "late", "lazy", "little", "loud", "lucky", "mellow", "narrow", "noisy", "odd",
    "plain", "polite", "proud", "quick", "quiet", "rapid", "rich", "round", "shiny", "silent",
    "tidy", "wild",
];

/// Common concrete nouns.
pub const NOUNS: [&str; 64] = [
    "apple", "anchor", "badge", "basket", "beacon", "bridge", "bucket", "cabin", "camera",
    "candle", "canyon", "carpet", "castle", "cherry", "circle", "clock", "cloud", "comet",
    "copper", "cradle", "desert", "dragon", "engine", "falcon", "feather", "forest", "garden",
    "glacier", "hammer", "harbor", "helmet", "island", "jacket", "kettle", "ladder", "lantern",
    "lemon", "meadow", "mirror", "monkey", "needle", "orange", "pebble", "pencil", "pepper",
    "pillow", "planet", "pocket", "rabbit", "ribbon", "river", "rocket", "saddle", "shadow",
    "silver", "spider", "statue", "tiger", "tunnel", "turtle", "velvet", "violin", "wagon",
    "window",
];

/// A random decimal number of `digits` digits (no leading zero).
pub fn number(rng: &mut impl Rng, digits: u32) -> String {
    let lo = 10u64.pow(digits - 1);
    rng.random_range(lo..lo * 10).to_string()
}

/// A random `adjective-noun` word.
pub fn word(rng: &mut impl Rng) -> String {
    let a = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
    let n = NOUNS[rng.random_range(0..NOUNS.len())];
    format!("{a}-{n}")
}

/// A random version-4 UUID string.
pub fn uuid(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// `n` distinct strings from `draw` (gives up on uniqueness after many tries, which only
/// happens when `n` exceeds the space of `draw`).
pub fn distinct(n: usize, mut draw: impl FnMut() -> String) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut tries = 0;
    while out.len() < n {
        let s = draw();
        tries += 1;
        if seen.insert(s.clone()) || tries > 100 * n {
            out.push(s);
        }
    }
    out
}

/// A random string of `len` upper-case ASCII letters (RULER's variable names).
pub fn upper(rng: &mut impl Rng, len: usize) -> String {
    (0..len)
        .map(|_| (b'A' + rng.random_range(0..26u8)) as char)
        .collect()
}

/// A random string of `len` lower-case ASCII letters.
pub fn lower(rng: &mut impl Rng, len: usize) -> String {
    (0..len)
        .map(|_| (b'a' + rng.random_range(0..26u8)) as char)
        .collect()
}

//! The run's [`Seed`] and the deterministic random streams derived from it.
//!
//! One seed drives every random choice of a chaos run: fault schedules, delay samples, which bit a
//! corruption flips, how held messages are shuffled, proxy jitter. It is logged once when chosen
//! ([`Seed::from_env_or_random`]) and a run is replayed by setting [`SEED_ENV`] to it.
//!
//! Each consumer of randomness draws from its own named stream ([`Seed::stream`]): a ChaCha8
//! generator keyed by the seed, on the ChaCha stream number derived from the name. Adding a rule
//! named `b` therefore never changes the schedule of rule `a`.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The environment variable [`Seed::from_env_or_random`] reads (decimal, or hex with `0x`).
pub const SEED_ENV: &str = "SQUALL_CHAOS_SEED";

/// The generator behind every stream: ChaCha8, portable and reproducible across platforms.
pub type ChaosRng = ChaCha8Rng;

/// The one number a chaos run's randomness comes from.
///
/// ```
/// use rand::Rng;
/// use squall_chaos::rng::Seed;
///
/// let seed: Seed = "0x2a".parse()?;
/// assert_eq!(seed, Seed::new(42));
/// // Same seed and name: the same stream. Another name: an independent one.
/// let a: u64 = seed.stream("drop-acks").random();
/// assert_eq!(a, seed.stream("drop-acks").random::<u64>());
/// assert_ne!(a, seed.stream("delay-publish").random::<u64>());
/// # Ok::<(), squall_chaos::rng::SeedParseError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seed(pub u64);

impl Seed {
    /// A given seed (replaying a run).
    pub fn new(seed: u64) -> Self {
        Seed(seed)
    }

    /// A fresh seed from the operating system's generator. Not logged; prefer
    /// [`Seed::from_env_or_random`] at the start of a run.
    pub fn random() -> Self {
        Seed(rand::rng().random())
    }

    /// The seed in [`SEED_ENV`] if set (panics if it does not parse: a replay with the wrong seed
    /// is worse than no run), otherwise a random one. Logs the seed and how to replay with it.
    pub fn from_env_or_random() -> Self {
        let (seed, origin) = match std::env::var(SEED_ENV) {
            Ok(v) => match v.parse::<Seed>() {
                Ok(s) => (s, "from the environment"),
                Err(e) => panic!("{SEED_ENV}={v:?}: {e}"),
            },
            Err(_) => (Seed::random(), "random"),
        };
        tracing::info!(seed = %seed, "chaos seed {origin}; replay with {SEED_ENV}={seed}");
        seed
    }

    /// The raw value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The independent stream called `name`: same seed and name, same numbers, whatever other
    /// streams exist or how much they were used.
    pub fn stream(self, name: &str) -> ChaosRng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.0);
        rng.set_stream(stream_id(name));
        rng
    }
}

/// FNV-1a: a stable hash (std's `DefaultHasher` may change between Rust releases, which would
/// break replaying an old seed).
fn stream_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// A seed string that is neither decimal nor `0x` hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a seed: expected a decimal or 0x-prefixed hex u64")]
pub struct SeedParseError(String);

impl FromStr for Seed {
    type Err = SeedParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => t.parse(),
        };
        parsed.map(Seed).map_err(|_| SeedParseError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_print_as_hex_and_parse_back() {
        let s = Seed::new(0xdead_beef);
        assert_eq!(s.to_string(), "0x00000000deadbeef");
        assert_eq!(s.to_string().parse::<Seed>(), Ok(s));
        assert_eq!("3735928559".parse::<Seed>(), Ok(s));
        assert!("nope".parse::<Seed>().is_err());
    }

    #[test]
    fn streams_are_reproducible_and_independent() {
        let draw = |seed: Seed, name: &str| -> Vec<u32> {
            let mut r = seed.stream(name);
            (0..8).map(|_| r.random()).collect()
        };
        let s = Seed::new(7);
        assert_eq!(draw(s, "a"), draw(s, "a"), "same seed and name must repeat");
        assert_ne!(
            draw(s, "a"),
            draw(s, "b"),
            "names must select different streams"
        );
        assert_ne!(draw(s, "a"), draw(Seed::new(8), "a"), "seeds must differ");
    }

    #[test]
    fn stream_ids_are_stable_across_releases() {
        // FNV-1a of "" and "a": if these change, old seeds no longer replay.
        assert_eq!(stream_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stream_id("a"), 0xaf63_dc4c_8601_ec8c);
    }
}

//! Delay distributions for [`super::Fault::Delay`].

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use squall_core::{Error, Result};

use crate::rng::ChaosRng;

/// How a delay is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum DelayDist {
    /// Always `delay`.
    Fixed {
        /// The delay.
        #[serde(with = "humantime_serde")]
        delay: Duration,
    },
    /// Uniform in `[min, max]`.
    Uniform {
        /// Shortest.
        #[serde(with = "humantime_serde")]
        min: Duration,
        /// Longest.
        #[serde(with = "humantime_serde")]
        max: Duration,
    },
    /// Normal around `mean`, clamped at zero.
    Normal {
        /// Centre.
        #[serde(with = "humantime_serde")]
        mean: Duration,
        /// Standard deviation.
        #[serde(with = "humantime_serde")]
        stddev: Duration,
    },
}

impl DelayDist {
    /// Always `d`.
    pub fn fixed(d: Duration) -> Self {
        DelayDist::Fixed { delay: d }
    }
    /// Uniform in `[min, max]`.
    pub fn uniform(min: Duration, max: Duration) -> Self {
        DelayDist::Uniform { min, max }
    }
    /// Normal around `mean` with `stddev`, clamped at zero.
    pub fn normal(mean: Duration, stddev: Duration) -> Self {
        DelayDist::Normal { mean, stddev }
    }

    /// Draws one delay.
    pub fn sample(&self, rng: &mut ChaosRng) -> Duration {
        match *self {
            DelayDist::Fixed { delay } => delay,
            DelayDist::Uniform { min, max } => {
                if max <= min {
                    min
                } else {
                    min + (max - min).mul_f64(rng.random::<f64>())
                }
            }
            DelayDist::Normal { mean, stddev } => {
                // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
                let u1: f64 = 1.0 - rng.random::<f64>();
                let u2: f64 = rng.random();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let secs = mean.as_secs_f64() + z * stddev.as_secs_f64();
                Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
            }
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        match *self {
            DelayDist::Uniform { min, max } if max < min => Err(Error::config(
                "fault.max",
                format!("uniform delay max {max:?} is below min {min:?}"),
            )),
            _ => Ok(()),
        }
    }
}

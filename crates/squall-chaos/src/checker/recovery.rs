//! Recovery time after each fault window.
//!
//! The baseline is the run before the first fault (the first phase, or up to the first fault
//! window if that starts earlier): the median deliveries per second and the largest lag. A
//! window has recovered in the first second, from its healing on, whose deliveries are back to
//! 80 % of the baseline rate (or the producers stopped offering load in or before it: the second
//! in which the load ends is partial, so its rate says nothing) and whose lag is at most twice
//! the baseline lag (and at least 10 messages).
//!
//! Every window gets an entry. A window still active at the end has no healing; a window another
//! one takes over from (starting no later than 100 ms after it ends, and ending later, as in a
//! degradation that worsens phase by phase) is noted as such, and the recovery is measured after
//! the last window of the chain.

use std::time::Duration;

use squall_core::Timestamp;

use super::{Bucket, Recovery};

/// How close after a window's end another must start to take over from it.
const TAKEOVER: Duration = Duration::from_millis(100);

pub(super) fn recoveries(
    timeline: &[Bucket],
    faults: &[(String, Timestamp, Option<Timestamp>)],
    phases: &[(String, Timestamp)],
    start: Timestamp,
) -> Vec<Recovery> {
    let baseline_end = phases
        .get(1)
        .map(|p| p.1.saturating_since(start).as_secs())
        .unwrap_or(u64::MAX);
    let first_fault = faults
        .iter()
        .map(|f| f.1.saturating_since(start).as_secs())
        .min()
        .unwrap_or(u64::MAX);
    let cut = baseline_end.min(first_fault);
    let mut base: Vec<&Bucket> = timeline.iter().filter(|b| b.t < cut && b.t > 0).collect();
    if base.is_empty() {
        base = timeline.iter().filter(|b| b.t < cut).collect();
    }
    let mut rates: Vec<u64> = base.iter().map(|b| b.delivered).collect();
    rates.sort_unstable();
    let base_rate = rates.get(rates.len() / 2).copied().unwrap_or(0);
    let base_lag = base.iter().map(|b| b.lag).max().unwrap_or(0);
    let offered_end = timeline.iter().rposition(|b| b.sent > 0).unwrap_or(0) as u64;
    let mut sorted: Vec<&(String, Timestamp, Option<Timestamp>)> = faults.iter().collect();
    sorted.sort_by_key(|f| f.1);
    sorted
        .iter()
        .enumerate()
        .map(|(i, (name, from, end))| {
            let started_at_s = from.saturating_since(start).as_secs_f64();
            let Some(end) = end else {
                return Recovery {
                    fault: name.clone(),
                    started_at_s,
                    healed_at_s: None,
                    recovery: None,
                    note: Some("still active at the end of the run".into()),
                };
            };
            let healed = end.saturating_since(start);
            let successor = sorted.iter().enumerate().find(|(j, (_, s2, e2))| {
                *j != i
                    && *s2 >= *from
                    && *s2 <= end.saturating_add(TAKEOVER)
                    && e2.is_none_or(|e2| e2 > *end)
            });
            if let Some((_, (next, _, _))) = successor {
                return Recovery {
                    fault: name.clone(),
                    started_at_s,
                    healed_at_s: Some(healed.as_secs_f64()),
                    recovery: None,
                    note: Some(format!("followed by {next}")),
                };
            }
            let from_s = healed.as_secs();
            let recovered = timeline.iter().filter(|b| b.t >= from_s).find(|b| {
                let rate_ok = b.delivered * 5 >= base_rate * 4 || b.t >= offered_end;
                rate_ok && b.lag <= (base_lag * 2).max(10)
            });
            Recovery {
                fault: name.clone(),
                started_at_s,
                healed_at_s: Some(healed.as_secs_f64()),
                recovery: recovered.map(|b| Duration::from_secs(b.t + 1).saturating_sub(healed)),
                note: None,
            }
        })
        .collect()
}

//! Start positions: first, new, a sequence, a time; and where a group starts by default.

use squall_core::{StartPosition, Timestamp};

use crate::case::Ctx;
use crate::helpers::{Must, Tally, collect, expect_quiet};
use crate::pubsub::receive_exactly;

pub(crate) async fn new_subscriber_receives_old(t: &Ctx<'_>) {
    let ids = t.publish_n("old", "o", 10).await;
    let mut c = t.subscribe(t.sub("old").start(StartPosition::First)).await;
    receive_exactly(
        c.as_mut(),
        &ids,
        t,
        "a subscriber starting from the first message",
    )
    .await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn start_new_skips_old(t: &Ctx<'_>) {
    t.publish_n("new", "old", 5).await;
    let mut c = t.subscribe(t.sub("new").start(StartPosition::New)).await;
    let fresh = t.publish_n("new", "fresh", 5).await;
    receive_exactly(
        c.as_mut(),
        &fresh,
        t,
        "a subscriber starting at new messages",
    )
    .await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn replay_by_sequence(t: &Ctx<'_>) {
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    for i in 0..10 {
        let m = t.message("seq", "s", i);
        ids.push(m.id().to_string());
        seqs.push(t.publish(m).await.sequence);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > 0,
        "a backend replaying by sequence must ack increasing non-zero sequences: {seqs:?}"
    );
    let mut c = t
        .subscribe(t.sub("seq").start(StartPosition::Sequence(seqs[4])))
        .await;
    let got = collect(c.as_mut(), 6, t.timing.receive).await;
    let mut tally = Tally::expecting(ids[4..].iter().cloned());
    for d in got {
        assert!(
            d.sequence() == 0 || d.sequence() >= seqs[4],
            "{} has sequence {}, before the start {}",
            d.message().id(),
            d.sequence(),
            seqs[4]
        );
        tally.record_delivery(&d);
        d.ack().await.must("acking");
    }
    assert!(
        tally.is_exact(),
        "starting at sequence {} of {seqs:?}: {tally}",
        seqs[4]
    );
    expect_quiet(c.as_mut(), t.timing.quiet).await;

    let next = seqs[9] + 1;
    let mut future = t
        .subscribe(t.sub("seq").start(StartPosition::Sequence(next)))
        .await;
    let later = t.publish_n("seq", "later", 1).await;
    receive_exactly(
        future.as_mut(),
        &later,
        t,
        "a subscriber starting after the last sequence",
    )
    .await;
    expect_quiet(future.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn replay_by_time(t: &Ctx<'_>) {
    let gap = t.timing.quiet;
    let mut probe = t.subscribe(t.sub("time")).await;
    let before = t.publish_n("time", "before", 3).await;
    let got = collect(probe.as_mut(), 3, t.timing.receive).await;
    assert_eq!(got.len(), 3, "the probe received {} of 3", got.len());
    let mut last_before = Timestamp(0);
    for d in got {
        assert!(
            d.published_at() > Timestamp(0),
            "{} has no publish time",
            d.message().id()
        );
        last_before = last_before.max(d.published_at());
        d.ack().await.must("acking");
    }
    tokio::time::sleep(gap).await;
    let after = t.publish_n("time", "after", 3).await;
    let at = last_before.saturating_add(gap / 2);
    let mut c = t
        .subscribe(t.sub("time").start(StartPosition::Time(at)))
        .await;
    let got = collect(c.as_mut(), 3, t.timing.receive).await;
    let mut tally = Tally::expecting(after.iter().cloned());
    for d in got {
        assert!(
            d.published_at() >= at,
            "{} stored at {:?}, before the start time {at:?}",
            d.message().id(),
            d.published_at()
        );
        tally.record_delivery(&d);
        d.ack().await.must("acking");
    }
    assert!(
        tally.is_exact(),
        "starting {:?} after the last of {before:?}: {tally}",
        gap / 2
    );
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn group_default_starts_first(t: &Ctx<'_>) {
    let ids = t.publish_n("gdf", "g", 5).await;
    let mut c = t.subscribe(t.group_sub("gdf", "g")).await;
    receive_exactly(c.as_mut(), &ids, t, "a new group without a start position").await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

//! Dead letters: max deliveries (by nack and by lease expiry), reject, the envelope, redrive, and
//! a policy's own dead-letter subject.

use std::time::Duration;

use squall_core::{
    Consumer, DeadLetter, DeadLetterReason, Delivery, DeliveryPolicy, ErrorKind, Message, Subject,
    Subscription, headers,
};

use crate::case::Ctx;
use crate::helpers::{Must, expect_err, expect_quiet, recv};

/// A fan-out consumer of the default dead-letter subject of `<prefix>.<suffix>`.
async fn dead_letter_consumer(t: &Ctx<'_>, suffix: &str) -> (Subject, Box<dyn Consumer>) {
    let to = DeliveryPolicy::default()
        .dead_letter_subject(&t.subject(suffix))
        .must("the default dead-letter subject");
    let sub = Subscription::new(to.as_str())
        .must("subscribing to dead letters")
        .ack_wait(t.timing.long_ack_wait());
    (to.clone(), t.subscribe(sub).await)
}

/// A message with a key and a header, so the dead letter can be checked to keep them.
fn original(t: &Ctx<'_>, suffix: &str) -> Message {
    let mut b = Message::builder(t.subject(suffix).as_str())
        .and_then(|b| b.id(t.id("dl", 0)))
        .and_then(|b| b.key("customer-7"))
        .must("building");
    if t.caps.headers.available() {
        b = b.header("x-origin", "conformance").must("adding a header");
    }
    b.payload(&b"{\"amount\":42}"[..]).build()
}

/// Checks the dead letter `dl` of `orig` and returns its envelope.
fn check_dead_letter(
    t: &Ctx<'_>,
    dl: &Delivery,
    orig: &Message,
    to: &Subject,
    group: &str,
) -> DeadLetter {
    let m = dl.message();
    let env = DeadLetter::read(m)
        .must("reading the envelope")
        .unwrap_or_else(|| {
            panic!(
                "dead letter on `{}` has no `{}` header",
                m.subject(),
                headers::DEAD_LETTER
            )
        });
    assert_eq!(m.subject(), to, "dead letter subject");
    assert_ne!(m.id(), orig.id(), "a dead letter gets a new id");
    assert_eq!(m.payload(), orig.payload(), "dead letter payload");
    assert_eq!(m.key(), orig.key(), "dead letter key");
    for (name, value) in orig.headers() {
        assert_eq!(
            m.headers().get(name),
            Some(value),
            "dead letter header `{name}`"
        );
    }
    assert_eq!(env.origin_id, orig.id().as_str(), "envelope origin_id");
    assert_eq!(
        &env.origin_subject,
        orig.subject(),
        "envelope origin_subject"
    );
    assert_eq!(
        env.group.as_deref(),
        Some(t.group(group).as_str()),
        "envelope group"
    );
    assert!(
        env.attempts.windows(2).all(|w| w[0] <= w[1]),
        "attempt times go backwards: {:?}",
        env.attempts
    );
    assert!(
        env.attempts
            .last()
            .is_none_or(|last| *last <= env.dead_lettered_at),
        "dead-lettered at {:?} before the last attempt {:?}",
        env.dead_lettered_at,
        env.attempts
    );
    env
}

pub(crate) async fn max_deliveries_dead_letter(t: &Ctx<'_>) {
    let (to, mut dlq) = dead_letter_consumer(t, "pay").await;
    let mut c = t.subscribe(t.group_sub("pay", "p").max_deliveries(3)).await;
    let orig = original(t, "pay");
    t.publish(orig.clone()).await;
    for attempt in 1..=3 {
        let d = recv(c.as_mut(), t.timing.receive, &format!("delivery {attempt}")).await;
        assert_eq!(d.message().id(), orig.id());
        assert_eq!(d.attempt(), attempt, "attempt number");
        d.nack(Duration::ZERO).await.must("nacking");
    }
    let dl = recv(
        dlq.as_mut(),
        t.timing.receive,
        "the dead letter after 3 deliveries",
    )
    .await;
    let env = check_dead_letter(t, &dl, &orig, &to, "p");
    assert_eq!(
        env.reason,
        DeadLetterReason::MaxDeliveries,
        "envelope reason"
    );
    assert_eq!(
        env.attempts.len(),
        3,
        "envelope attempts: {:?}",
        env.attempts
    );
    assert!(!env.error.is_empty(), "the envelope's error is empty");
    dl.ack().await.must("acking the dead letter");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
    expect_quiet(dlq.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn dead_letter_after_lease_expiries(t: &Ctx<'_>) {
    let ack_wait = t.timing.ack_wait;
    let (to, mut dlq) = dead_letter_consumer(t, "slow").await;
    let sub = t
        .group_sub("slow", "s")
        .ack_wait(ack_wait)
        .max_deliveries(2);
    let mut c = t.subscribe(sub).await;
    let orig = original(t, "slow");
    t.publish(orig.clone()).await;
    let d1 = recv(c.as_mut(), t.timing.receive, "delivery 1").await;
    assert_eq!(d1.attempt(), 1);
    let d2 = recv(
        c.as_mut(),
        ack_wait + t.timing.receive,
        "delivery 2 after expiry",
    )
    .await;
    assert_eq!(d2.attempt(), 2);
    assert_eq!(d2.message().id(), orig.id());
    let dl = recv(dlq.as_mut(), ack_wait + t.timing.receive, "the dead letter").await;
    let env = check_dead_letter(t, &dl, &orig, &to, "s");
    assert_eq!(
        env.reason,
        DeadLetterReason::MaxDeliveries,
        "envelope reason"
    );
    assert_eq!(
        env.attempts.len(),
        2,
        "envelope attempts: {:?}",
        env.attempts
    );
    expect_err(
        d2.ack().await,
        &[ErrorKind::LeaseExpired],
        "ack of the dead-lettered message",
    );
    drop(d1);
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn reject_dead_letters(t: &Ctx<'_>) {
    let reason = "bad payload: expected a JSON object";
    let (to, mut dlq) = dead_letter_consumer(t, "rej").await;
    let mut c = t
        .subscribe(t.group_sub("rej", "r").max_deliveries(10))
        .await;
    let orig = original(t, "rej");
    t.publish(orig.clone()).await;
    let d = recv(c.as_mut(), t.timing.receive, "first delivery").await;
    d.reject(reason).await.must("rejecting");
    let dl = recv(
        dlq.as_mut(),
        t.timing.receive,
        "the dead letter of a reject",
    )
    .await;
    let env = check_dead_letter(t, &dl, &orig, &to, "r");
    assert_eq!(env.reason, DeadLetterReason::Rejected, "envelope reason");
    assert_eq!(env.error, reason, "envelope error");
    assert_eq!(
        env.attempts.len(),
        1,
        "envelope attempts: {:?}",
        env.attempts
    );
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn dead_letter_redrive(t: &Ctx<'_>) {
    let (_, mut dlq) = dead_letter_consumer(t, "redrive").await;
    let mut c = t.subscribe(t.group_sub("redrive", "r")).await;
    let orig = original(t, "redrive");
    t.publish(orig.clone()).await;
    let d = recv(c.as_mut(), t.timing.receive, "first delivery").await;
    d.reject("poison").await.must("rejecting");
    let dl = recv(dlq.as_mut(), t.timing.receive, "the dead letter").await;
    let again = DeadLetter::redrive(dl.message(), None).must("building the redrive");
    t.publish(again).await;
    dl.ack().await.must("acking the dead letter");
    let d = recv(c.as_mut(), t.timing.receive, "the redriven message").await;
    let m = d.message();
    assert_eq!(m.subject(), orig.subject(), "redriven subject");
    assert_eq!(m.payload(), orig.payload(), "redriven payload");
    assert_eq!(m.key(), orig.key(), "redriven key");
    assert_eq!(
        m.headers().get(headers::DEAD_LETTER),
        None,
        "redriven message keeps the envelope"
    );
    if t.caps.headers.available() {
        assert_eq!(
            m.headers().get("squall-redriven-from"),
            Some(orig.id().as_str())
        );
    }
    assert_eq!(d.attempt(), 1, "a redriven message is a new message");
    d.ack().await.must("acking the redriven message");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
    expect_quiet(dlq.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn dead_letter_custom_subject(t: &Ctx<'_>) {
    let custom = t.subject("graveyard");
    let mut graveyard = t.subscribe(t.sub("graveyard")).await;
    let (_, mut default_dlq) = dead_letter_consumer(t, "custom").await;
    let sub = t
        .group_sub("custom", "c")
        .max_deliveries(1)
        .dead_letter(custom.clone());
    let mut c = t.subscribe(sub).await;
    let orig = original(t, "custom");
    t.publish(orig.clone()).await;
    let d = recv(c.as_mut(), t.timing.receive, "the only allowed delivery").await;
    d.nack(Duration::ZERO)
        .await
        .must("nacking the last allowed delivery");
    let dl = recv(
        graveyard.as_mut(),
        t.timing.receive,
        "the dead letter on the custom subject",
    )
    .await;
    let env = check_dead_letter(t, &dl, &orig, &custom, "c");
    assert_eq!(env.reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(
        env.attempts.len(),
        1,
        "envelope attempts: {:?}",
        env.attempts
    );
    expect_quiet(default_dlq.as_mut(), t.timing.quiet).await;
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

//! Limits and validation: headers, payload size, subjects, patterns, policies, and capabilities
//! declared honestly (a missing feature is refused, never silently ignored).

use std::time::Duration;

use squall_core::headers::{MAX_HEADERS_LEN, REPLY_TO};
use squall_core::subject::MAX_SUBJECT_LEN;
use squall_core::{
    ErrorKind, Message, Pattern, StartPosition, Subject, Subscription, Support, Timestamp,
};

use crate::case::Ctx;
use crate::helpers::{Must, expect_err, expect_quiet, recv};

/// Payloads at the limit are sent only up to this size, to keep the suite fast.
const MAX_PAYLOAD_PROBE: usize = 8 << 20;

pub(crate) async fn oversized_header_rejected(t: &Ctx<'_>) {
    let builder = || Message::builder(t.subject("h").as_str()).must("building");
    let big = "x".repeat(MAX_HEADERS_LEN);
    expect_err(
        builder().header("big", &big),
        &[ErrorKind::InvalidMessage],
        "a header over the limit",
    );
    let mut m = builder().build();
    let chunk = "y".repeat(1000);
    let mut inserted = 0;
    let err = loop {
        match m.headers_mut().insert(format!("h{inserted}"), &chunk) {
            Ok(()) => inserted += 1,
            Err(e) => break e,
        }
        assert!(
            inserted <= MAX_HEADERS_LEN / 1000,
            "{inserted} KB of headers accepted"
        );
    };
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidMessage,
        "headers growing past the limit: {err}"
    );
    assert!(
        m.headers().encoded_len() <= MAX_HEADERS_LEN,
        "refused insert changed the headers"
    );
    expect_err(
        builder().header("bad name", "v"),
        &[ErrorKind::InvalidMessage],
        "a header name with a space",
    );
    expect_err(
        builder().header("x", "line\nbreak"),
        &[ErrorKind::InvalidMessage],
        "a header value with a newline",
    );

    if !t.caps.headers.available() {
        println!(
            "{}: {} has no headers; round trip not checked",
            t.case,
            t.backend.name()
        );
        return;
    }
    let value = "v".repeat(16 * 1024);
    if value.len() * 2 > t.caps.max_payload {
        println!(
            "{}: max_payload {} too small for a 16 KiB header",
            t.case, t.caps.max_payload
        );
        return;
    }
    let mut c = t.subscribe(t.sub("h")).await;
    let sent = builder()
        .header("x-large", &value)
        .and_then(|b| b.header("x-small", "s"))
        .must("building with a large header")
        .payload("p")
        .build();
    t.publish(sent.clone()).await;
    let d = recv(
        c.as_mut(),
        t.timing.receive,
        "the message with a 16 KiB header",
    )
    .await;
    assert_eq!(
        d.message().headers().get("x-large"),
        Some(value.as_str()),
        "large header"
    );
    assert_eq!(
        d.message().headers().get("x-small"),
        Some("s"),
        "small header"
    );
    d.ack().await.must("acking");
}

pub(crate) async fn payload_limit(t: &Ctx<'_>) {
    let max = t.caps.max_payload;
    let mut c = t.subscribe(t.sub("big")).await;
    let over = Message::builder(t.subject("big").as_str())
        .and_then(|b| b.id(t.id("over", 0)))
        .must("building")
        .payload(vec![7u8; max + 1])
        .build();
    let r = t.backend.publish(over).await;
    expect_err(
        r,
        &[ErrorKind::InvalidMessage],
        &format!("a payload of {} bytes (max {max})", max + 1),
    );
    if max > MAX_PAYLOAD_PROBE {
        println!(
            "{}: max_payload {max} over {MAX_PAYLOAD_PROBE}: the limit itself not sent",
            t.case
        );
        expect_quiet(c.as_mut(), t.timing.quiet).await;
        return;
    }
    let body: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    let at = Message::builder(t.subject("big").as_str())
        .and_then(|b| b.id(t.id("at", 0)))
        .must("building")
        .payload(body.clone())
        .build();
    t.publish(at).await;
    let d = recv(c.as_mut(), t.timing.receive, "the message at max_payload").await;
    assert_eq!(
        d.message().id().as_str(),
        t.id("at", 0),
        "the oversized message was delivered"
    );
    assert!(
        d.message().payload()[..] == body[..],
        "the payload of {max} bytes changed"
    );
    d.ack().await.must("acking");
    expect_quiet(c.as_mut(), t.timing.quiet).await;
}

pub(crate) async fn invalid_subjects_rejected(t: &Ctx<'_>) {
    let long = "a".repeat(MAX_SUBJECT_LEN + 1);
    let bad_subjects = [
        "",
        "a..b",
        ".a",
        "a.",
        "a b",
        "a.*",
        "a.>",
        "a.b*",
        "caf\u{e9}",
        "tab\t",
        &long,
    ];
    for bad in bad_subjects {
        expect_err(
            Subject::new(bad),
            &[ErrorKind::InvalidSubject],
            &format!("subject {bad:?}"),
        );
        expect_err(
            Message::builder(bad),
            &[ErrorKind::InvalidSubject],
            &format!("message to {bad:?}"),
        );
    }
    for bad in ["", "a.>.b", "a*", "a.b>", ">.a", "a..*", "a b.*"] {
        expect_err(
            Pattern::new(bad),
            &[ErrorKind::InvalidPattern],
            &format!("pattern {bad:?}"),
        );
        expect_err(
            Subscription::new(bad),
            &[ErrorKind::InvalidPattern],
            &format!("subscription to {bad:?}"),
        );
    }
    let req = Message::builder(t.subject("q").as_str())
        .and_then(|b| b.header(REPLY_TO, "a..b"))
        .must("building a request with a bad reply subject")
        .build();
    expect_err(
        Message::reply_to(&req, "x"),
        &[ErrorKind::InvalidSubject],
        "replying to `a..b`",
    );

    // The longest valid subject works end to end.
    let fill = MAX_SUBJECT_LEN - t.prefix.len() - 1;
    let longest = format!("{}.{}", t.prefix, "z".repeat(fill));
    assert_eq!(longest.len(), MAX_SUBJECT_LEN);
    let sub = Subscription::new(&longest)
        .must("subscribing to the longest subject")
        .ack_wait(t.timing.long_ack_wait());
    let mut c = t.subscribe(sub).await;
    let m = Message::builder(&longest)
        .must("a message to the longest subject")
        .build();
    t.publish(m.clone()).await;
    let d = recv(
        c.as_mut(),
        t.timing.receive,
        "the message to the longest subject",
    )
    .await;
    assert_eq!(d.message().subject().as_str(), longest);
    d.ack().await.must("acking");
}

pub(crate) async fn invalid_policy_rejected(t: &Ctx<'_>) {
    let kinds: &[ErrorKind] = if t.caps.dead_letter.available() {
        &[ErrorKind::InvalidConfig]
    } else {
        &[ErrorKind::InvalidConfig, ErrorKind::Unsupported]
    };
    let cases = [
        (
            "ack_wait",
            t.sub("p").ack_wait(Duration::ZERO),
            &[ErrorKind::InvalidConfig][..],
        ),
        (
            "max_in_flight",
            t.sub("p").max_in_flight(0),
            &[ErrorKind::InvalidConfig][..],
        ),
        ("max_deliveries", t.sub("p").max_deliveries(0), kinds),
    ];
    for (field, sub, kinds) in cases {
        let r = t.backend.subscribe(sub).await.map(|_| ());
        let e = expect_err(r, kinds, &format!("a subscription with {field} = 0"));
        if e.kind() == ErrorKind::InvalidConfig {
            assert!(
                e.to_string().contains(field),
                "the error does not name `{field}`: {e}"
            );
        }
    }
    expect_err(
        t.sub("p").group("no spaces allowed"),
        &[ErrorKind::InvalidConfig],
        "a group name with spaces",
    );
}

pub(crate) async fn capabilities_consistent(t: &Ctx<'_>) {
    let declared = t.backend.capabilities();
    assert_eq!(
        t.caps,
        declared,
        "harness {} declares other capabilities than backend `{}` reports",
        t.harness.name(),
        t.backend.name()
    );
    assert!(!t.backend.name().is_empty(), "the backend's name is empty");
    assert!(t.caps.max_payload > 0, "max_payload is 0");
    let unsupported = |r: squall_core::Result<()>, what: &str| {
        expect_err(r, &[ErrorKind::Unsupported], what);
    };
    let subscribe = |sub: Subscription| async move { t.backend.subscribe(sub).await.map(|_| ()) };
    let missing = |s: Support| s == Support::Missing;
    let mut probed = 0;
    if missing(t.caps.groups) {
        probed += 1;
        unsupported(
            subscribe(t.group_sub("g", "g")).await,
            "a group without `groups`",
        );
    }
    if missing(t.caps.durable_groups) && t.caps.groups.available() {
        probed += 1;
        let sub = t.group_sub("d", "d").durable(true);
        unsupported(
            subscribe(sub).await,
            "a durable group without `durable_groups`",
        );
    }
    if missing(t.caps.key_ordering) && t.caps.groups.available() {
        probed += 1;
        let sub = t.group_sub("k", "k").ordered_by_key(true);
        unsupported(
            subscribe(sub).await,
            "ordered_by_key without `key_ordering`",
        );
    }
    if missing(t.caps.dead_letter) {
        probed += 1;
        let sub = t.sub("m").max_deliveries(3);
        unsupported(subscribe(sub).await, "max_deliveries without `dead_letter`");
    }
    if missing(t.caps.replay_by_sequence) {
        probed += 1;
        let sub = t.sub("s").start(StartPosition::Sequence(1));
        unsupported(
            subscribe(sub).await,
            "a sequence start without `replay_by_sequence`",
        );
    }
    if missing(t.caps.replay_by_time) {
        probed += 1;
        let sub = t.sub("s").start(StartPosition::Time(Timestamp::now()));
        unsupported(
            subscribe(sub).await,
            "a time start without `replay_by_time`",
        );
    }
    if missing(t.caps.wildcards) {
        probed += 1;
        unsupported(
            subscribe(t.sub("*")).await,
            "a wildcard without `wildcards`",
        );
    }
    if missing(t.caps.delayed_delivery) {
        probed += 1;
        let mut m = t.message("x", "delay", 0);
        m.set_delay(Some(Duration::from_secs(1)));
        unsupported(
            t.backend.publish(m).await.map(|_| ()),
            "a delay without `delayed_delivery`",
        );
    }
    if missing(t.caps.ttl) {
        probed += 1;
        let mut m = t.message("x", "ttl", 0);
        m.set_ttl(Some(Duration::from_secs(60)));
        unsupported(
            t.backend.publish(m).await.map(|_| ()),
            "a ttl without `ttl`",
        );
    }
    if missing(t.caps.request_reply) {
        probed += 1;
        let r = t
            .backend
            .request(t.message("x", "req", 0), t.timing.quiet)
            .await;
        unsupported(r.map(|_| ()), "a request without `request_reply`");
    }
    println!(
        "capabilities_consistent: {} declares {:?}; {probed} missing features refused",
        t.backend.name(),
        t.caps.table()
    );
}

//! Request-reply: replies reach the requester with the correlation id, unanswered requests time
//! out in time, concurrent requests are not crossed.

use std::sync::Arc;

use squall_core::{Backend, Consumer, ErrorKind, Message};
use tokio::time::Instant;

use crate::case::Ctx;
use crate::helpers::{Must, collect, expect_err, join, recv};

/// What the responder saw of a request: its correlation id and reply subject.
type Seen = (Option<String>, Option<String>);

/// Answers one request with `re:<payload>`, returning what it saw.
async fn answer(backend: &Arc<dyn Backend>, d: squall_core::Delivery) -> Seen {
    let req = d.message();
    let seen = (
        req.correlation_id().map(str::to_string),
        req.reply_subject()
            .must("reading the reply subject")
            .map(|s| s.to_string()),
    );
    let mut body = b"re:".to_vec();
    body.extend_from_slice(req.payload());
    let reply = Message::reply_to(req, body).must("building the reply");
    backend.publish(reply).await.must("publishing the reply");
    d.ack().await.must("acking the request");
    seen
}

pub(crate) async fn request_reply(t: &Ctx<'_>) {
    let mut responder = t.subscribe(t.sub("svc")).await;
    let backend = t.backend.clone();
    let receive = t.timing.receive;
    let serving = tokio::spawn(async move {
        let d = recv(responder.as_mut(), receive, "the request").await;
        (answer(&backend, d).await, responder)
    });
    let req = t.message("svc", "q", 0);
    let reply = t
        .backend
        .request(req, t.timing.receive)
        .await
        .must("requesting");
    let ((corr, reply_to), _responder) = join(serving).await;
    assert_eq!(&reply.payload()[..], b"re:q-0", "reply payload");
    let corr = corr
        .unwrap_or_else(|| panic!("the request reached the responder without a correlation id"));
    assert!(!corr.is_empty(), "empty correlation id");
    assert!(
        reply_to.is_some(),
        "the request reached the responder without a reply subject"
    );
    assert_eq!(
        reply.correlation_id(),
        Some(corr.as_str()),
        "the reply's correlation id"
    );
}

pub(crate) async fn request_timeout(t: &Ctx<'_>) {
    let wait = t.timing.quiet;
    let t0 = Instant::now();
    let r = t.backend.request(t.message("nobody", "q", 0), wait).await;
    let took = t0.elapsed();
    expect_err(
        r,
        &[ErrorKind::Timeout, ErrorKind::NoResponders],
        "a request nobody can answer",
    );
    assert!(
        took <= wait + t.timing.receive,
        "the request took {took:?} to give up after {wait:?}"
    );

    // Somebody listens but never answers: that is a timeout, and not an early one.
    let mut silent: Box<dyn Consumer> = t.subscribe(t.sub("silent")).await;
    let t0 = Instant::now();
    let r = t.backend.request(t.message("silent", "q", 0), wait).await;
    let took = t0.elapsed();
    expect_err(
        r,
        &[ErrorKind::Timeout],
        "a request whose responder stays silent",
    );
    assert!(
        took + t.timing.slack >= wait,
        "gave up after {took:?}, before the {wait:?} timeout"
    );
    assert!(
        took <= wait + t.timing.receive,
        "the request took {took:?} to give up after {wait:?}"
    );
    let d = recv(
        silent.as_mut(),
        t.timing.receive,
        "the silent responder's request",
    )
    .await;
    d.ack().await.must("acking");
}

pub(crate) async fn concurrent_requests(t: &Ctx<'_>) {
    let n = 10;
    let mut responder = t.subscribe(t.sub("echo")).await;
    let backend = t.backend.clone();
    let receive = t.timing.receive;
    let serving = tokio::spawn(async move {
        let got = collect(responder.as_mut(), n, receive).await;
        assert_eq!(
            got.len(),
            n,
            "the responder received {} of {n} requests",
            got.len()
        );
        // Answer in reverse order so a requester matching replies by arrival would cross them.
        for d in got.into_iter().rev() {
            answer(&backend, d).await;
        }
        responder
    });
    let mut requests = Vec::new();
    for i in 0..n {
        let (backend, req, wait) = (t.backend.clone(), t.message("echo", "q", i), receive * 2);
        requests.push(tokio::spawn(async move {
            let payload = req.payload().clone();
            let reply = backend
                .request(req, wait)
                .await
                .must(&format!("request {i}"));
            let mut want = b"re:".to_vec();
            want.extend_from_slice(&payload);
            assert_eq!(
                &reply.payload()[..],
                &want[..],
                "request {i} got another request's reply"
            );
        }));
    }
    for r in requests {
        join(r).await;
    }
    join(serving).await;
}

use super::*;
use crate::rng::Seed;

#[test]
fn delay_distributions_stay_in_range() {
    let mut rng = Seed::new(1).stream("d");
    let ms = Duration::from_millis;
    for _ in 0..1000 {
        let u = DelayDist::uniform(ms(5), ms(10)).sample(&mut rng);
        assert!(u >= ms(5) && u <= ms(10), "uniform out of range: {u:?}");
        // A huge deviation around a small mean must clamp at zero, never panic or wrap.
        let _ = DelayDist::normal(ms(1), ms(1000)).sample(&mut rng);
    }
    assert_eq!(DelayDist::fixed(ms(3)).sample(&mut rng), ms(3));
    let mean: f64 = (0..2000)
        .map(|_| {
            DelayDist::normal(ms(100), ms(10))
                .sample(&mut rng)
                .as_secs_f64()
        })
        .sum::<f64>()
        / 2000.0;
    assert!((mean - 0.1).abs() < 0.005, "normal mean drifted: {mean}");
}

#[test]
fn rules_parse_from_toml_and_bad_ones_are_refused() {
    let r: Rule = toml::from_str(
        r#"
        name = "slow"
        point = "deliver"
        groups = ["billing"]
        probability = 0.5
        window = { phase = "degraded" }
        fault = { kind = "delay", dist = "uniform", min = "1ms", max = "5ms" }
        "#,
    )
    .unwrap();
    assert!(
        matches!(r.fault, Fault::Delay(DelayDist::Uniform { .. })),
        "{r:?}"
    );
    assert_eq!(r.window, Some(Window::Phase("degraded".into())));
    r.validate().unwrap();
    let e: Rule = toml::from_str(
        "name = \"e\"\npoint = \"publish\"\nfault = { kind = \"error\", error = \"full\" }",
    )
    .unwrap();
    assert!(matches!(
        e.fault,
        Fault::Error {
            error: Kind(ErrorKind::Full)
        }
    ));
    assert!(
        toml::from_str::<Rule>(
            "name = \"e\"\npoint = \"ack\"\nfault = { kind = \"error\", error = \"bogus\" }"
        )
        .is_err()
    );

    let lie_at_ack = Rule::new("x", Point::Ack, Fault::LieDrop);
    assert!(
        lie_at_ack
            .validate()
            .unwrap_err()
            .to_string()
            .contains("lie_drop")
    );
    assert!(
        Rule::new("p", Point::Publish, Fault::Drop)
            .probability(1.5)
            .validate()
            .is_err()
    );
}

#[test]
fn filters_and_windows_select_sites() {
    let subj = Subject::new("orders.eu").unwrap();
    let other = Subject::new("users.eu").unwrap();
    let r = Rule::new("r", Point::Deliver, Fault::Drop)
        .subject("orders.>")
        .unwrap()
        .group("billing")
        .between(Duration::from_secs(1), Duration::from_secs(2));
    let site = Site::new(Point::Deliver)
        .subject(&subj)
        .group(Some("billing"));
    let at = Duration::from_millis(1500);
    assert!(r.matches(&site, None, at));
    assert!(
        !r.matches(&site, None, Duration::from_secs(2)),
        "window end is exclusive"
    );
    assert!(
        !r.matches(
            &Site::new(Point::Deliver)
                .subject(&other)
                .group(Some("billing")),
            None,
            at
        )
    );
    assert!(!r.matches(&site.group(Some("audit")), None, at));
    assert!(!r.matches(
        &Site {
            point: Point::Ack,
            ..site
        },
        None,
        at
    ));
    let phased = Rule::new("q", Point::Deliver, Fault::Drop).phase("storm");
    assert!(phased.matches(&site, Some("storm"), at));
    assert!(!phased.matches(&site, Some("calm"), at));
}

#[test]
fn flip_bit_changes_exactly_one_bit() {
    let mut m = Message::builder("a").unwrap().payload(vec![0u8; 4]).build();
    assert!(
        flip_bit(&mut m, 8 * 4 + 9),
        "index wraps modulo the payload bits"
    );
    let ones: u32 = m.payload().iter().map(|b| b.count_ones()).sum();
    assert_eq!(ones, 1);
    assert_eq!(m.payload()[1], 0b10);
    let mut empty = Message::builder("a").unwrap().build();
    assert!(!flip_bit(&mut empty, 3));
}

#[test]
fn restart_rules_parse_from_toml_and_fit_every_point_but_connect() {
    let r: Rule = toml::from_str(
        "name = \"bounce\"\npoint = \"deliver\"\nfault = { kind = \"restart\", downtime = \"500ms\" }",
    )
    .unwrap();
    assert_eq!(
        r.fault,
        Fault::Restart {
            downtime: Duration::from_millis(500)
        }
    );
    r.validate().unwrap();
    let at_once: Rule =
        toml::from_str("name = \"b\"\npoint = \"ack\"\nfault = { kind = \"restart\" }").unwrap();
    assert_eq!(
        at_once.fault,
        Fault::Restart {
            downtime: Duration::ZERO
        }
    );
    let connect: Rule =
        toml::from_str("name = \"b\"\npoint = \"connect\"\nfault = { kind = \"restart\" }")
            .unwrap();
    assert!(connect.validate().is_err(), "reopening passes `connect`");
    assert!(
        toml::from_str::<Rule>(
            "name = \"b\"\npoint = \"ack\"\nfault = { kind = \"restart\", after = \"1s\" }"
        )
        .is_err(),
        "unknown keys are refused"
    );
}

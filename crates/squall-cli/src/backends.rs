//! `--backend URL`: one place that turns a URL into a connected [`Backend`], by scheme.
//!
//! | scheme | backend |
//! |---|---|
//! | `squall://host:port` | a `squall serve` through squall-client |
//! | `nats://host:port` | NATS core; `?jetstream=1` for JetStream (squall-nats) |
//! | `amqp://user:pass@host:port/vhost` | RabbitMQ (squall-amqp) |
//! | `sqs://host:port?region=…` | Amazon SQS or an SQS-compatible server (squall-sqs; `sqs://aws?region=…` for Amazon's endpoint) |
//! | `kafka://host:port` | Kafka-protocol brokers (squall-kafka; binary built with `--features kafka`) |

use std::sync::Arc;

use squall_core::{Backend, Error, Result};

/// Connects to the backend `url` names.
pub async fn connect(url: &str) -> Result<Arc<dyn Backend>> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "squall" => {
            let mut config = squall_client::ClientConfig::from_url(url)?;
            config.name = "squall-cli".into();
            Ok(Arc::new(squall_client::Client::connect(config).await?))
        }
        "nats" => Ok(Arc::new(squall_nats::connect_url(url).await?)),
        "amqp" | "amqps" => Ok(Arc::new(squall_amqp::AmqpBackend::connect_url(url).await?)),
        "sqs" => Ok(Arc::new(squall_sqs::connect_url(url).await?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(squall_kafka::connect_url(url).await?)),
        #[cfg(not(feature = "kafka"))]
        "kafka" => Err(Error::new(
            squall_core::ErrorKind::Unsupported,
            "this squall binary was built without Kafka support: build it with `--features kafka`",
        )),
        _ => Err(Error::config(
            "--backend",
            format!(
                "`{}`: expected a URL starting with squall://, nats://, amqp://, sqs:// or kafka://",
                redact(url)
            ),
        )),
    }
}

pub use squall_core::options::redact;

#[cfg(test)]
mod tests {
    use super::*;
    use squall_core::ErrorKind;

    #[test]
    fn passwords_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[tokio::test]
    async fn an_unknown_scheme_names_the_flag() {
        let Err(err) = connect("mqtt://127.0.0.1:1883").await else {
            panic!("an mqtt:// URL must be refused");
        };
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("--backend"), "{err}");
    }
}

//! librdkafka errors as squall [`ErrorKind`]s.

use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
use squall_core::{Error, ErrorKind};

/// The squall kind of a librdkafka error code.
pub(crate) fn kind_of(code: C) -> ErrorKind {
    match code {
        C::QueueFull => ErrorKind::Full,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidMessage
        | C::InvalidRecord
        | C::BadMessage
        | C::InvalidTimestamp => ErrorKind::InvalidMessage,
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            ErrorKind::Timeout
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::UnknownTopicId => {
            ErrorKind::NotFound
        }
        C::InvalidTopic => ErrorKind::InvalidSubject,
        C::TopicAlreadyExists => ErrorKind::Conflict,
        C::AllBrokersDown
        | C::BrokerTransportFailure
        | C::Resolve
        | C::NetworkException
        | C::LeaderNotAvailable
        | C::NotLeaderForPartition
        | C::BrokerNotAvailable
        | C::ReplicaNotAvailable
        | C::CoordinatorLoadInProgress
        | C::CoordinatorNotAvailable
        | C::NotCoordinator
        | C::NotEnoughReplicas
        | C::NotEnoughReplicasAfterAppend
        | C::RebalanceInProgress
        | C::WaitingForCoordinator
        | C::ThrottlingQuotaExceeded
        | C::NotController
        | C::KafkaStorageError
        | C::Retry => ErrorKind::Unavailable,
        C::PurgeQueue | C::PurgeInflight | C::BrokerDestroy | C::DestroyBroker => ErrorKind::Closed,
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::SSL
        | C::InvalidConfig
        | C::InvalidRequiredAcks
        | C::InvalidSessionTimeout
        | C::InvalidReplicationFactor
        | C::InvalidPartitions
        | C::PolicyViolation
        | C::TopicDeletionDisabled
        | C::UnsupportedCompressionType
        | C::InvalidGroupId => ErrorKind::InvalidConfig,
        C::UnsupportedVersion | C::UnsupportedFeature | C::NotImplemented => ErrorKind::Unsupported,
        C::OutOfOrderSequenceNumber
        | C::DuplicateSequenceNumber
        | C::InvalidProducerEpoch
        | C::UnknownProducerId
        | C::InvalidProducerIdMapping
        | C::Fatal
        | C::Inconsistent
        | C::BadCompression
        | C::InvalidRequest => ErrorKind::Protocol,
        _ => ErrorKind::Unavailable,
    }
}

/// `e` as a squall error, with `what` failed as the message and the librdkafka error as source.
pub(crate) fn from_kafka(what: &str, e: KafkaError) -> Error {
    let kind = match &e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => ErrorKind::InvalidConfig,
        KafkaError::Canceled => ErrorKind::Closed,
        KafkaError::Nul(_) => ErrorKind::InvalidMessage,
        KafkaError::Subscription(_) => ErrorKind::InvalidPattern,
        KafkaError::PauseResume(_) | KafkaError::Seek(_) => ErrorKind::Internal,
        other => other
            .rdkafka_error_code()
            .map(kind_of)
            .unwrap_or(ErrorKind::Unavailable),
    };
    Error::new(kind, what.to_string()).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_kinds_retry_logic_expects() {
        assert_eq!(kind_of(C::QueueFull), ErrorKind::Full);
        assert!(Error::new(kind_of(C::AllBrokersDown), "x").is_retryable());
        assert!(Error::new(kind_of(C::MessageTimedOut), "x").is_retryable());
        assert!(!Error::new(kind_of(C::MessageSizeTooLarge), "x").is_retryable());
        let e = from_kafka(
            "publishing",
            KafkaError::MessageProduction(C::UnknownTopicOrPartition),
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().starts_with("publishing: "), "{e}");
    }
}

//! Mapping the AWS SDK's errors to squall's [`ErrorKind`]s.
//!
//! | SDK error / SQS error code | kind |
//! |---|---|
//! | no connection, timeout, I/O error (dispatch failure) | `Unavailable`, naming the endpoint |
//! | `QueueDoesNotExist`, `AWS.SimpleQueueService.NonExistentQueue` | `NotFound` |
//! | `QueueNameExists`, `QueueAlreadyExists` (a queue exists with other attributes) | `Conflict` |
//! | `QueueDeletedRecently` (a name is unusable for 60 s after a delete) | `Unavailable` |
//! | `ReceiptHandleIsInvalid`, `InvalidReceiptHandle`, `MessageNotInflight` | `LeaseExpired` |
//! | `OverLimit`, `RequestThrottled`, `ThrottlingException`, `KmsThrottled` | `Full` |
//! | `AccessDenied`, `InvalidClientTokenId`, `SignatureDoesNotMatch`, `UnrecognizedClientException`, `InvalidSecurity`, `MissingAuthenticationToken`, `ExpiredToken`, credential errors | `InvalidConfig` (check the credentials and region) |
//! | `InvalidParameterValue`, `InvalidMessageContents`, `InvalidAttributeName`, `InvalidAttributeValue`, `BatchRequestTooLong`, `MessageTooLong` | `InvalidMessage` |
//! | `ServiceUnavailable`, `InternalError`, HTTP 5xx | `Unavailable` |
//! | anything else | `Protocol` |

use std::error::Error as StdError;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use squall_core::{Error, ErrorKind};

/// The kind of an SQS error `code`.
pub(crate) fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue" => ErrorKind::NotFound,
        "QueueNameExists" | "QueueAlreadyExists" => ErrorKind::Conflict,
        "QueueDeletedRecently" | "AWS.SimpleQueueService.QueueDeletedRecently" => {
            ErrorKind::Unavailable
        }
        "ReceiptHandleIsInvalid" | "InvalidReceiptHandle" | "MessageNotInflight" => {
            ErrorKind::LeaseExpired
        }
        "OverLimit" | "RequestThrottled" | "ThrottlingException" | "KmsThrottled" => {
            ErrorKind::Full
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "InvalidSecurity"
        | "MissingAuthenticationToken"
        | "ExpiredToken" => ErrorKind::InvalidConfig,
        "InvalidParameterValue"
        | "InvalidParameterValueException"
        | "InvalidMessageContents"
        | "InvalidAttributeName"
        | "InvalidAttributeValue"
        | "BatchRequestTooLong"
        | "MessageTooLong" => ErrorKind::InvalidMessage,
        "ServiceUnavailable" | "InternalError" | "InternalFailure" => ErrorKind::Unavailable,
        _ => ErrorKind::Protocol,
    }
}

/// A squall error for `what` failing against `endpoint` with the SDK error `e`.
pub(crate) fn sqs<E, R>(what: &str, endpoint: &str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let (kind, detail) = match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => (
            ErrorKind::Unavailable,
            format!(
                "cannot reach SQS at {endpoint}: {}",
                DisplayErrorContext(&e)
            ),
        ),
        SdkError::ConstructionFailure(_) => {
            let text = DisplayErrorContext(&e).to_string();
            let kind = if text.contains("credential") {
                ErrorKind::InvalidConfig
            } else {
                ErrorKind::Internal
            };
            (kind, text)
        }
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => match e.code() {
            Some(code) => {
                let msg = e.message().unwrap_or("");
                (kind_of_code(code), format!("{code}: {msg}"))
            }
            None => (ErrorKind::Protocol, DisplayErrorContext(&e).to_string()),
        },
        _ => (ErrorKind::Protocol, DisplayErrorContext(&e).to_string()),
    };
    let hint = match kind {
        ErrorKind::InvalidConfig => " (check the credentials and the region of the SQS URL)",
        ErrorKind::Conflict => {
            " (it exists with other attributes: another fifo, max_receive, retention or \
             visibility_timeout setting)"
        }
        _ => "",
    };
    Error::new(kind, format!("{what}: {detail}{hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_table() {
        assert_eq!(kind_of_code("QueueDoesNotExist"), ErrorKind::NotFound);
        assert_eq!(
            kind_of_code("AWS.SimpleQueueService.NonExistentQueue"),
            ErrorKind::NotFound
        );
        assert_eq!(kind_of_code("QueueNameExists"), ErrorKind::Conflict);
        assert_eq!(
            kind_of_code("ReceiptHandleIsInvalid"),
            ErrorKind::LeaseExpired
        );
        assert_eq!(kind_of_code("OverLimit"), ErrorKind::Full);
        assert_eq!(
            kind_of_code("InvalidClientTokenId"),
            ErrorKind::InvalidConfig
        );
        assert_eq!(
            kind_of_code("InvalidParameterValue"),
            ErrorKind::InvalidMessage
        );
        assert_eq!(kind_of_code("Teapot"), ErrorKind::Protocol);
    }
}

//! A typed JSON codec: [`JsonLayer`] decodes each message into a `T` (serde) and hands the
//! handler a [`Json<T>`]; [`to_message`] encodes one with the headers the layer checks.
//!
//! Producers set `content-type: application/json` and `schema-version: <v>`; the layer accepts
//! the versions it was given (messages without the header are taken as the layer's own version
//! unless [`JsonLayer::require_version`]). A payload that does not decode, a content type that
//! is not JSON, or a version the handler does not read can never succeed, so they fail as
//! **permanent** errors ([`JsonError`]) and the message is dead-lettered at once with the
//! reason, instead of being retried.
//!
//! Shape: [`JsonLayer`] makes the [`JsonService`] service; its error is [`JsonError`].
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use squall_middleware::json::{self, Json, JsonError, JsonLayer};
//! use squall_middleware::{Incoming, request_fn, HandlerError};
//! use tower::{Layer, ServiceExt};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { id: u64, total_cents: u64 }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let svc = JsonLayer::<Order>::new("1").layer(request_fn(|order: Json<Order>| async move {
//!     assert_eq!(order.total_cents, 4200);
//!     Ok::<_, HandlerError>(())
//! }));
//! let msg = json::to_message("orders.placed", &Order { id: 7, total_cents: 4200 }, "1")?;
//! svc.clone().oneshot(Incoming::new(msg)).await.unwrap();
//!
//! let garbage = squall_core::Message::builder("orders.placed")?.payload("{oops").build();
//! let err = svc.oneshot(Incoming::new(garbage)).await.unwrap_err();
//! assert!(err.is_permanent());
//! assert!(matches!(err.find::<JsonError>(), Some(JsonError::Decode { .. })));
//! # Ok::<(), squall_core::Error>(()) }).unwrap();
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;
use squall_core::{Error, ErrorKind, Message, headers};
use tower::{Layer, Service};

use crate::error::{BoxError, HandlerError, from_inner};
use crate::handler::Incoming;

/// The media type [`to_message`] sets.
pub const APPLICATION_JSON: &str = "application/json";

/// A decoded message: the value, and the delivery it came with. Derefs to the value.
#[derive(Debug, Clone)]
pub struct Json<T> {
    /// The decoded payload.
    pub value: T,
    /// The message and its delivery facts.
    pub incoming: Incoming,
}

impl<T> Json<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

/// Why a message could not be decoded (always a permanent error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// The payload is not valid JSON for the type.
    #[error("payload is not a valid `{type_name}` (JSON): {source}")]
    Decode {
        /// The Rust type expected.
        type_name: &'static str,
        /// serde's reason, with line and column.
        source: serde_json::Error,
    },
    /// The `schema-version` header names a version the handler does not read.
    #[error("schema version `{got}` is not one this handler reads ({})", expected.join(", "))]
    SchemaVersion {
        /// The message's version.
        got: String,
        /// The versions accepted.
        expected: Vec<String>,
    },
    /// The message has no `schema-version` header and the layer requires one.
    #[error("the message has no `schema-version` header; this handler reads {}", expected.join(", "))]
    MissingVersion {
        /// The versions accepted.
        expected: Vec<String>,
    },
    /// The `content-type` header is not JSON.
    #[error("content type `{0}` is not JSON")]
    ContentType(String),
}

/// A message to `subject` carrying `value` as JSON, with `content-type: application/json` and
/// `schema-version: <schema_version>`.
pub fn to_message<T: Serialize + ?Sized>(
    subject: &str,
    value: &T,
    schema_version: &str,
) -> Result<Message, Error> {
    let payload = serde_json::to_vec(value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidMessage,
            "the value cannot be encoded as JSON",
        )
        .with_source(e)
    })?;
    Ok(Message::builder(subject)?
        .header(headers::CONTENT_TYPE, APPLICATION_JSON)?
        .header(headers::SCHEMA_VERSION, schema_version)?
        .payload(payload)
        .build())
}

/// Decodes messages into `T`; see the [module docs](self).
pub struct JsonLayer<T> {
    versions: Arc<[String]>,
    require_version: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for JsonLayer<T> {
    fn clone(&self) -> Self {
        JsonLayer {
            versions: self.versions.clone(),
            require_version: self.require_version,
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for JsonLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLayer")
            .field("type", &std::any::type_name::<T>())
            .field("versions", &self.versions)
            .field("require_version", &self.require_version)
            .finish()
    }
}

impl<T> JsonLayer<T> {
    /// Reads schema version `version` (and messages without a version).
    pub fn new(version: impl Into<String>) -> Self {
        JsonLayer {
            versions: vec![version.into()].into(),
            require_version: false,
            _t: PhantomData,
        }
    }
    /// Also reads `version` (its payloads must decode into `T` too).
    pub fn accept(mut self, version: impl Into<String>) -> Self {
        let mut v = self.versions.to_vec();
        v.push(version.into());
        self.versions = v.into();
        self
    }
    /// Refuses messages without a `schema-version` header.
    pub fn require_version(mut self, on: bool) -> Self {
        self.require_version = on;
        self
    }
}

impl<T> JsonLayer<T>
where
    T: DeserializeOwned,
{
    /// Checks the headers and decodes `m`.
    pub fn decode(&self, m: &Message) -> Result<T, JsonError> {
        if let Some(ct) = m.headers().get(headers::CONTENT_TYPE) {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if !(essence.eq_ignore_ascii_case(APPLICATION_JSON) || essence.ends_with("+json")) {
                return Err(JsonError::ContentType(ct.to_string()));
            }
        }
        match m.headers().get(headers::SCHEMA_VERSION) {
            Some(v) if !self.versions.iter().any(|a| a == v) => {
                return Err(JsonError::SchemaVersion {
                    got: v.to_string(),
                    expected: self.versions.to_vec(),
                });
            }
            None if self.require_version => {
                return Err(JsonError::MissingVersion {
                    expected: self.versions.to_vec(),
                });
            }
            _ => {}
        }
        serde_json::from_slice(m.payload()).map_err(|source| JsonError::Decode {
            type_name: std::any::type_name::<T>(),
            source,
        })
    }
}

impl<S, T> Layer<S> for JsonLayer<T> {
    type Service = JsonService<S, T>;
    fn layer(&self, inner: S) -> JsonService<S, T> {
        JsonService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`JsonLayer`]: a service over [`Incoming`] wrapping one over [`Json<T>`].
pub struct JsonService<S, T> {
    inner: S,
    layer: JsonLayer<T>,
}

impl<S: Clone, T> Clone for JsonService<S, T> {
    fn clone(&self) -> Self {
        JsonService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, T> fmt::Debug for JsonService<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.layer.fmt(f)
    }
}

impl<S, T> Service<Incoming> for JsonService<S, T>
where
    S: Service<Json<T>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    T: DeserializeOwned,
{
    type Response = S::Response;
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, HandlerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx).map_err(from_inner)
    }

    fn call(&mut self, incoming: Incoming) -> Self::Future {
        match self.layer.decode(incoming.message()) {
            Ok(value) => {
                let fut = self.inner.call(Json { value, incoming });
                Box::pin(async move { fut.await.map_err(from_inner) })
            }
            Err(e) => Box::pin(std::future::ready(Err(HandlerError::permanent(e)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    struct Order {
        id: u64,
    }

    #[test]
    fn headers_are_set_and_checked() {
        let m = to_message("o", &Order { id: 1 }, "2").unwrap();
        assert_eq!(
            m.headers().get(headers::CONTENT_TYPE),
            Some(APPLICATION_JSON)
        );
        assert_eq!(m.headers().get(headers::SCHEMA_VERSION), Some("2"));
        let v1 = JsonLayer::<Order>::new("1");
        let e = v1.decode(&m).unwrap_err();
        assert_eq!(
            e.to_string(),
            "schema version `2` is not one this handler reads (1)"
        );
        assert_eq!(v1.clone().accept("2").decode(&m).unwrap(), Order { id: 1 });

        let bare = Message::builder("o")
            .unwrap()
            .payload(r#"{"id":3}"#)
            .build();
        assert_eq!(
            v1.decode(&bare).unwrap(),
            Order { id: 3 },
            "no version: taken as ours"
        );
        assert!(matches!(
            v1.clone().require_version(true).decode(&bare),
            Err(JsonError::MissingVersion { .. })
        ));
        let xml = Message::builder("o")
            .unwrap()
            .header(headers::CONTENT_TYPE, "application/xml")
            .unwrap()
            .build();
        assert!(matches!(v1.decode(&xml), Err(JsonError::ContentType(_))));
        let vendor = Message::builder("o")
            .unwrap()
            .header(
                headers::CONTENT_TYPE,
                "application/vnd.acme+json; charset=utf-8",
            )
            .unwrap()
            .payload(r#"{"id":4}"#)
            .build();
        assert_eq!(v1.decode(&vendor).unwrap(), Order { id: 4 });
    }
}

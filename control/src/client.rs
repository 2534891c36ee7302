//! A thin client over the generated `relay.v1` stub: connects, adds the bearer token to every
//! request, and offers one method per RPC with plain arguments.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use control::client::RelayClient;
//! let mut relay = RelayClient::connect("http://127.0.0.1:7070", Some("secret".into())).await?;
//! for call in relay.list_calls("", &[]).await? {
//!     println!("{} {:?}", call.call_id, call.state());
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};
use tonic_types::StatusExt;

use crate::pb;

/// Errors from connecting (the call itself fails with a [`Status`]).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid endpoint {endpoint:?}: {source}")]
    Endpoint {
        endpoint: String,
        source: tonic::transport::Error,
    },
    #[error("the token is not a valid header value (printable ASCII only)")]
    InvalidToken,
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
}

/// Adds `authorization: Bearer <token>` to every request (nothing when there is no token).
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for BearerAuth {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerAuth")
            .field("token", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl BearerAuth {
    pub fn new(token: Option<&str>) -> Result<Self, ConnectError> {
        let header = match token {
            None => None,
            Some(t) => Some(
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ConnectError::InvalidToken)?,
            ),
        };
        Ok(BearerAuth { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}

/// The generated client with the token interceptor, for RPCs the wrapper does not cover.
pub type RawClient = pb::relay_client::RelayClient<InterceptedService<Channel, BearerAuth>>;

#[derive(Clone, Debug)]
pub struct RelayClient {
    inner: RawClient,
}

impl RelayClient {
    /// Connect to `endpoint` (`http://host:port`, or `https://` with the system's TLS roots;
    /// use [`RelayClient::connect_tls`] for a private CA or mTLS).
    pub async fn connect(
        endpoint: impl Into<String>,
        token: Option<String>,
    ) -> Result<Self, ConnectError> {
        Self::connect_tls(endpoint, token, None).await
    }

    /// Connect with an explicit TLS configuration (CA, client identity for mTLS).
    pub async fn connect_tls(
        endpoint: impl Into<String>,
        token: Option<String>,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, ConnectError> {
        let endpoint = endpoint.into();
        let bad = |source| ConnectError::Endpoint {
            endpoint: endpoint.clone(),
            source,
        };
        let mut ep = Endpoint::from_shared(endpoint.clone())
            .map_err(bad)?
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            ep = ep.tls_config(tls).map_err(bad)?;
        }
        let channel = ep.connect().await.map_err(|source| ConnectError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
        Self::with_channel(channel, token)
    }

    /// Wrap an already configured channel.
    pub fn with_channel(channel: Channel, token: Option<String>) -> Result<Self, ConnectError> {
        let auth = BearerAuth::new(token.as_deref())?;
        Ok(RelayClient {
            inner: pb::relay_client::RelayClient::with_interceptor(channel, auth),
        })
    }

    /// The generated client, for full control over requests.
    pub fn raw(&mut self) -> &mut RawClient {
        &mut self.inner
    }

    pub async fn create_call(
        &mut self,
        req: pb::CreateCallRequest,
    ) -> Result<pb::CreateCallResponse, Status> {
        Ok(self.inner.create_call(req).await?.into_inner())
    }

    pub async fn set_remote_description(
        &mut self,
        call_id: impl Into<String>,
        leg: pb::Leg,
        sdp: impl Into<String>,
    ) -> Result<pb::CallInfo, Status> {
        let req = pb::SetRemoteDescriptionRequest {
            call_id: call_id.into(),
            leg: leg.into(),
            sdp: sdp.into(),
        };
        let resp = self.inner.set_remote_description(req).await?.into_inner();
        resp.call
            .ok_or_else(|| missing("SetRemoteDescriptionResponse.call"))
    }

    /// Transfer: the call's internal leg now goes to the peer `internal` describes. The response
    /// carries the SDP for the new peer.
    pub async fn replace_internal_leg(
        &mut self,
        call_id: impl Into<String>,
        internal: pb::InternalLeg,
    ) -> Result<pb::ReplaceInternalLegResponse, Status> {
        let req = pb::ReplaceInternalLegRequest {
            call_id: call_id.into(),
            internal: Some(internal),
        };
        Ok(self.inner.replace_internal_leg(req).await?.into_inner())
    }

    pub async fn open_gate(&mut self, call_id: impl Into<String>) -> Result<pb::CallInfo, Status> {
        let req = pb::OpenGateRequest {
            call_id: call_id.into(),
        };
        let resp = self.inner.open_gate(req).await?.into_inner();
        resp.call.ok_or_else(|| missing("OpenGateResponse.call"))
    }

    /// Start, stop, pause or resume recording a call. `None` only for a stop on a call that was
    /// never recorded.
    pub async fn recording(
        &mut self,
        call_id: impl Into<String>,
        op: RecordingOp,
    ) -> Result<Option<pb::Recording>, Status> {
        let call_id = call_id.into();
        let resp = match op {
            RecordingOp::Start => {
                self.inner
                    .start_recording(pb::StartRecordingRequest { call_id })
                    .await?
            }
            RecordingOp::Stop => {
                self.inner
                    .stop_recording(pb::StopRecordingRequest { call_id })
                    .await?
            }
            RecordingOp::Pause => {
                self.inner
                    .pause_recording(pb::PauseRecordingRequest { call_id })
                    .await?
            }
            RecordingOp::Resume => {
                self.inner
                    .resume_recording(pb::ResumeRecordingRequest { call_id })
                    .await?
            }
        };
        Ok(resp.into_inner().recording)
    }

    /// Start a live listen-in with the supervisor's SDP offer: the response carries the
    /// relay's answer (`answer_sdp`). Idempotent for the same offer.
    pub async fn start_listen(
        &mut self,
        call_id: impl Into<String>,
        offer_sdp: impl Into<String>,
    ) -> Result<pb::Listen, Status> {
        let req = pb::StartListenRequest {
            call_id: call_id.into(),
            offer_sdp: offer_sdp.into(),
            mode: pb::ListenMode::Listen.into(),
        };
        let resp = self.inner.start_listen(req).await?.into_inner();
        resp.listen.ok_or_else(|| missing("ListenResponse.listen"))
    }

    /// Stop the call's listen-in. `None` only for a call never listened to.
    pub async fn stop_listen(
        &mut self,
        call_id: impl Into<String>,
    ) -> Result<Option<pb::Listen>, Status> {
        let req = pb::StopListenRequest {
            call_id: call_id.into(),
        };
        Ok(self.inner.stop_listen(req).await?.into_inner().listen)
    }

    /// `None` when the call was unknown or had already ended.
    pub async fn terminate(
        &mut self,
        call_id: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<Option<pb::CallInfo>, Status> {
        let req = pb::TerminateRequest {
            call_id: call_id.into(),
            reason: reason.into(),
        };
        Ok(self.inner.terminate(req).await?.into_inner().call)
    }

    /// The call and its event log.
    pub async fn get_call(
        &mut self,
        call_id: impl Into<String>,
    ) -> Result<pb::GetCallResponse, Status> {
        let req = pb::GetCallRequest {
            call_id: call_id.into(),
        };
        Ok(self.inner.get_call(req).await?.into_inner())
    }

    /// `business_number` empty and `states` empty mean "all".
    pub async fn list_calls(
        &mut self,
        business_number: impl Into<String>,
        states: &[pb::CallState],
    ) -> Result<Vec<pb::CallInfo>, Status> {
        let req = pb::ListCallsRequest {
            business_number: business_number.into(),
            states: states.iter().map(|s| i32::from(*s)).collect(),
        };
        Ok(self.inner.list_calls(req).await?.into_inner().calls)
    }

    /// Events of one call (`Some`) or all calls (`None`), as they happen.
    pub async fn watch(
        &mut self,
        call_id: Option<String>,
    ) -> Result<Streaming<pb::WatchResponse>, Status> {
        let req = pb::WatchRequest {
            call_id: call_id.unwrap_or_default(),
        };
        Ok(self.inner.watch(req).await?.into_inner())
    }

    pub async fn load(&mut self) -> Result<pb::GetLoadResponse, Status> {
        Ok(self
            .inner
            .get_load(pb::GetLoadRequest {})
            .await?
            .into_inner())
    }

    /// `None`: the relay's default deadline.
    pub async fn drain(&mut self, deadline: Option<Duration>) -> Result<pb::DrainResponse, Status> {
        let deadline = deadline.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        });
        Ok(self
            .inner
            .drain(pb::DrainRequest { deadline })
            .await?
            .into_inner())
    }

    /// Read (`None`) or replace the relay's log filter; returns the filter in force.
    pub async fn set_log_level(&mut self, filter: Option<String>) -> Result<String, Status> {
        Ok(self
            .inner
            .set_log_level(pb::SetLogLevelRequest {
                filter: filter.unwrap_or_default(),
            })
            .await?
            .into_inner()
            .filter)
    }

    /// Read (both `None`) or change the admission limits; returns those in force.
    pub async fn set_limits(
        &mut self,
        capacity: Option<u32>,
        max_shard_busy_percent: Option<u32>,
    ) -> Result<pb::SetLimitsResponse, Status> {
        Ok(self
            .inner
            .set_limits(pb::SetLimitsRequest {
                capacity,
                max_shard_busy_percent,
            })
            .await?
            .into_inner())
    }

    /// Turn one call's debug logging on or off; returns whether it is on.
    pub async fn set_call_debug(&mut self, call_id: String, enabled: bool) -> Result<bool, Status> {
        Ok(self
            .inner
            .set_call_debug(pb::SetCallDebugRequest { call_id, enabled })
            .await?
            .into_inner()
            .enabled)
    }
}

fn missing(field: &str) -> Status {
    Status::internal(format!("relay response lacks {field}"))
}

/// The Meta-style error code a failed call carries (100, 138002, 138003...), read from the
/// `google.rpc.ErrorInfo` status detail, or else from the `meta-code` trailing metadata.
pub fn meta_code(status: &Status) -> Option<u32> {
    let details = status.get_error_details();
    if let Some(info) = details.error_info()
        && let Some(code) = info.metadata.get(crate::META_CODE_DETAIL_KEY)
        && let Ok(code) = code.parse()
    {
        return Some(code);
    }
    status
        .metadata()
        .get(crate::META_CODE_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The `ErrorInfo.reason` of a failed call ("CALL_LIMIT", "DUPLICATE_CALL", ...), if any.
pub fn error_reason(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// The four recording RPCs, for [`RelayClient::recording`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RecordingOp {
    Start,
    Stop,
    Pause,
    Resume,
}

//! `relay.v1.Relay` over a [`CallControl`] engine.

use std::sync::Arc;
use std::time::Duration;

use control::pb;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::{ApiError, CallControl, ListenOp, RecordingOp, RefusedReason};

use super::convert;
use super::drain::Drain;
use super::events::{self, EventLog, WatchStream};
use super::status::to_status;

pub struct RelayService<C> {
    pub(super) engine: Arc<C>,
    pub(super) log: Arc<EventLog>,
    pub(super) drain: Arc<Drain>,
    pub(super) health: HealthReporter,
    pub(super) stop: watch::Receiver<bool>,
}

fn api<T>(r: Result<T, ApiError>) -> Result<T, Status> {
    r.map_err(|e| to_status(&e))
}

fn call_id(id: String) -> Result<String, Status> {
    api(convert::required_id("call_id", id))
}

impl<C: CallControl> RelayService<C> {
    /// The four recording RPCs differ only in the operation.
    async fn recording(
        &self,
        id: String,
        op: RecordingOp,
    ) -> Result<Response<pb::RecordingResponse>, Status> {
        let id = call_id(id)?;
        let status = api(self.engine.recording(id, op).await)?;
        Ok(Response::new(pb::RecordingResponse {
            recording: status.as_ref().map(convert::recording),
        }))
    }
}

#[tonic::async_trait]
impl<C: CallControl> pb::relay_server::Relay for RelayService<C> {
    async fn create_call(
        &self,
        request: Request<pb::CreateCallRequest>,
    ) -> Result<Response<pb::CreateCallResponse>, Status> {
        let req = convert::create_call(request.into_inner()).map_err(|e| {
            self.engine.count_refused(RefusedReason::InvalidRequest);
            to_status(&e)
        })?;
        // While draining the engine refuses new calls but answers repeats of existing ones
        // (they stay idempotent: a retried `connect` webhook must get the same answer).
        let created = api(self.engine.create_call(req).await)?;
        Ok(Response::new(convert::call_created(created)))
    }

    async fn set_remote_description(
        &self,
        request: Request<pb::SetRemoteDescriptionRequest>,
    ) -> Result<Response<pb::SetRemoteDescriptionResponse>, Status> {
        let req = request.into_inner();
        let id = call_id(req.call_id)?;
        let leg = api(convert::leg_kind(req.leg))?;
        if req.sdp.is_empty() {
            return Err(to_status(&ApiError::InvalidArgument(
                "sdp is required".into(),
            )));
        }
        let info = api(self.engine.set_remote_description(id, leg, req.sdp).await)?;
        Ok(Response::new(pb::SetRemoteDescriptionResponse {
            call: Some(convert::call_info(info)),
        }))
    }

    async fn open_gate(
        &self,
        request: Request<pb::OpenGateRequest>,
    ) -> Result<Response<pb::OpenGateResponse>, Status> {
        let id = call_id(request.into_inner().call_id)?;
        let info = api(self.engine.open_gate(id).await)?;
        Ok(Response::new(pb::OpenGateResponse {
            call: Some(convert::call_info(info)),
        }))
    }

    async fn replace_internal_leg(
        &self,
        request: Request<pb::ReplaceInternalLegRequest>,
    ) -> Result<Response<pb::ReplaceInternalLegResponse>, Status> {
        let req = request.into_inner();
        let id = call_id(req.call_id)?;
        // Unlike CreateCall, the new peer must be described: there is no sensible default.
        let Some(internal) = req.internal else {
            return Err(to_status(&ApiError::InvalidArgument(
                "internal is required: the new internal peer".into(),
            )));
        };
        let spec = api(convert::internal_leg(internal))?;
        let r = api(self.engine.replace_internal_leg(id, spec).await)?;
        Ok(Response::new(pb::ReplaceInternalLegResponse {
            internal_sdp: r.internal_sdp,
            call: Some(convert::call_info(r.call)),
        }))
    }

    async fn start_recording(
        &self,
        request: Request<pb::StartRecordingRequest>,
    ) -> Result<Response<pb::RecordingResponse>, Status> {
        self.recording(request.into_inner().call_id, RecordingOp::Start)
            .await
    }

    async fn stop_recording(
        &self,
        request: Request<pb::StopRecordingRequest>,
    ) -> Result<Response<pb::RecordingResponse>, Status> {
        self.recording(request.into_inner().call_id, RecordingOp::Stop)
            .await
    }

    async fn pause_recording(
        &self,
        request: Request<pb::PauseRecordingRequest>,
    ) -> Result<Response<pb::RecordingResponse>, Status> {
        self.recording(request.into_inner().call_id, RecordingOp::Pause)
            .await
    }

    async fn resume_recording(
        &self,
        request: Request<pb::ResumeRecordingRequest>,
    ) -> Result<Response<pb::RecordingResponse>, Status> {
        self.recording(request.into_inner().call_id, RecordingOp::Resume)
            .await
    }

    async fn start_listen(
        &self,
        request: Request<pb::StartListenRequest>,
    ) -> Result<Response<pb::ListenResponse>, Status> {
        let (id, op) = api(convert::start_listen(request.into_inner()))?;
        let status = api(self.engine.listen(id, op).await)?;
        Ok(Response::new(pb::ListenResponse {
            listen: status.as_ref().map(convert::listen),
        }))
    }

    async fn stop_listen(
        &self,
        request: Request<pb::StopListenRequest>,
    ) -> Result<Response<pb::ListenResponse>, Status> {
        let id = call_id(request.into_inner().call_id)?;
        let status = api(self.engine.listen(id, ListenOp::Stop).await)?;
        Ok(Response::new(pb::ListenResponse {
            listen: status.as_ref().map(convert::listen),
        }))
    }

    async fn terminate(
        &self,
        request: Request<pb::TerminateRequest>,
    ) -> Result<Response<pb::TerminateResponse>, Status> {
        let req = request.into_inner();
        let id = call_id(req.call_id)?;
        let info = api(self.engine.terminate(id, req.reason).await)?;
        Ok(Response::new(pb::TerminateResponse {
            call: info.map(convert::call_info),
        }))
    }

    async fn get_call(
        &self,
        request: Request<pb::GetCallRequest>,
    ) -> Result<Response<pb::GetCallResponse>, Status> {
        let id = call_id(request.into_inner().call_id)?;
        let events = self.log.get(&id);
        let call = match self.engine.get_call(id).await {
            Ok(info) => Some(convert::call_info(info)),
            // The engine has forgotten an ended call, but its log is still worth reading.
            Err(ApiError::NotFound(_)) if !events.is_empty() => None,
            Err(e) => return Err(to_status(&e)),
        };
        Ok(Response::new(pb::GetCallResponse { call, events }))
    }

    async fn list_calls(
        &self,
        request: Request<pb::ListCallsRequest>,
    ) -> Result<Response<pb::ListCallsResponse>, Status> {
        let req = request.into_inner();
        let states = api(convert::call_states(&req.states))?;
        let calls = api(self.engine.list_calls().await)?
            .into_iter()
            .filter(|c| req.business_number.is_empty() || c.business_number == req.business_number)
            .filter(|c| states.is_empty() || states.contains(&c.state))
            .map(convert::call_info)
            .collect();
        Ok(Response::new(pb::ListCallsResponse { calls }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = request.into_inner().call_id;
        let filter = if id.is_empty() {
            None
        } else {
            Some(call_id(id)?)
        };
        let rx = self.engine.subscribe();
        Ok(Response::new(events::watch_stream(
            rx,
            filter,
            self.stop.clone(),
        )))
    }

    async fn get_load(
        &self,
        _request: Request<pb::GetLoadRequest>,
    ) -> Result<Response<pb::GetLoadResponse>, Status> {
        let load = api(self.engine.load().await)?;
        Ok(Response::new(convert::load(load, self.drain.is_draining())))
    }

    async fn set_log_level(
        &self,
        request: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<pb::SetLogLevelResponse>, Status> {
        let Some(level) = crate::ops::logs::log_level() else {
            return Err(to_status(&ApiError::FailedPrecondition(
                "this process's log filter cannot be changed".into(),
            )));
        };
        let filter = request.into_inner().filter;
        let filter = if filter.trim().is_empty() {
            level.current()
        } else {
            let now = level
                .set(&filter)
                .map_err(|e| to_status(&ApiError::InvalidArgument(format!("log filter: {e}"))))?;
            tracing::info!(filter = %now, "log filter changed");
            now
        };
        Ok(Response::new(pb::SetLogLevelResponse { filter }))
    }

    async fn set_limits(
        &self,
        request: Request<pb::SetLimitsRequest>,
    ) -> Result<Response<pb::SetLimitsResponse>, Status> {
        let req = request.into_inner();
        let limits = api(self
            .engine
            .set_limits(req.capacity, req.max_shard_busy_percent))?;
        Ok(Response::new(pb::SetLimitsResponse {
            capacity: limits.capacity,
            max_shard_busy_percent: limits.max_shard_busy_percent,
        }))
    }

    async fn set_call_debug(
        &self,
        request: Request<pb::SetCallDebugRequest>,
    ) -> Result<Response<pb::SetCallDebugResponse>, Status> {
        let req = request.into_inner();
        let id = call_id(req.call_id)?;
        if req.enabled {
            // Only for a call the relay holds (a typo must not silently log nothing).
            api(self.engine.get_call(id.clone()).await)?;
        }
        let enabled = crate::ops::logs::set_call_debug(&id, req.enabled);
        tracing::info!(call_id = %id, enabled, "call debug logging");
        Ok(Response::new(pb::SetCallDebugResponse { enabled }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let after = match request.into_inner().deadline {
            None => self.drain.default_deadline(),
            Some(d) => Duration::try_from(d).map_err(|_| {
                to_status(&ApiError::InvalidArgument(
                    "deadline must be a non-negative duration".into(),
                ))
            })?,
        };
        // The same drain as SIGTERM's: admission off now (readiness, metrics and GetLoad follow
        // the engine), the remaining calls ended with cause DRAINED at the deadline.
        let deadline = self.drain.start(after);
        self.health
            .set_service_status(control::SERVICE_NAME, ServingStatus::NotServing)
            .await;
        let load = api(self.engine.load().await)?;
        tracing::info!(active_calls = load.active_calls, ?after, "draining");
        Ok(Response::new(pb::DrainResponse {
            active_calls: load.active_calls,
            deadline: Some(deadline.into()),
        }))
    }
}

//! What both agents do with an incoming Binding request: authenticate it against our
//! credentials and answer it. Requests that fail authentication get no answer at all, so a
//! spoofed source cannot use us to amplify traffic.

use std::net::SocketAddr;

use crate::ice::{IceCredentials, IceStats};
use crate::net::{Outbox, SocketRef};
use crate::wire::stun::{BINDING, StunClass, StunError, StunMessage, StunWriter, code};

/// Room for the largest message we write: a check with a 513-byte USERNAME is 589 bytes.
pub(crate) const SCRATCH_LEN: usize = 768;

/// True for a Binding request whose USERNAME is `local_ufrag:remote_ufrag` (the remote part
/// is checked only once we know it), whose MESSAGE-INTEGRITY verifies with our password,
/// whose FINGERPRINT (if present) is right, that carries PRIORITY (RFC 8445 §7.1.1) and no
/// unknown comprehension-required attribute.
pub(crate) fn authentic_request(
    msg: &StunMessage<'_>,
    local: &IceCredentials,
    remote: Option<&IceCredentials>,
) -> bool {
    if msg.class() != StunClass::Request || msg.method() != BINDING {
        return false;
    }
    let Some(username) = msg.username() else {
        return false;
    };
    let Some(colon) = username.iter().position(|b| *b == b':') else {
        return false;
    };
    let (ours, theirs) = username.split_at(colon);
    let theirs = theirs.get(1..).unwrap_or(&[]);
    if ours != local.ufrag.as_bytes() {
        return false;
    }
    if remote.is_some_and(|r| theirs != r.ufrag.as_bytes()) {
        return false;
    }
    msg.priority().is_some()
        && msg.unknown_comprehension_required().is_none()
        && (!msg.has_fingerprint() || msg.check_fingerprint())
        && msg.verify_integrity(local.pwd.as_bytes())
}

/// Which role we hold, for the role-conflict rule (RFC 8445 §7.3.1.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum OurRole {
    /// The relay toward Meta: Meta is lite and must be controlled, so we keep the role
    /// whatever the tiebreakers say (a controlled relay stalls with a lite peer).
    Controlling,
    /// A lite agent is always controlled (RFC 8445 §6.1.1).
    Controlled,
}

/// The one place both agents apply the security rules to an incoming Binding request:
/// unauthenticated requests are counted and get no answer (no amplification for spoofed
/// sources); a peer claiming our role gets 487 Role Conflict; anything else gets a success
/// response. True when it was answered with success: the caller goes on to act on it
/// (triggered check, nomination, consent).
#[allow(clippy::too_many_arguments)]
pub(crate) fn answer_request(
    scratch: &mut [u8],
    out: &mut impl Outbox,
    stats: &mut IceStats,
    via: SocketRef,
    from: SocketAddr,
    msg: &StunMessage<'_>,
    local: &IceCredentials,
    remote: Option<&IceCredentials>,
    role: OurRole,
) -> bool {
    if !authentic_request(msg, local, remote) {
        stats.rejected_requests += 1;
        return false;
    }
    let conflict = match role {
        OurRole::Controlling => msg.ice_controlling().is_some(),
        OurRole::Controlled => msg.ice_controlled().is_some(),
    };
    let error = conflict.then_some((code::ROLE_CONFLICT, "Role Conflict"));
    respond(scratch, out, stats, via, from, msg, local, error);
    !conflict
}

/// Answers an authenticated request with a success response (XOR-MAPPED-ADDRESS = `from`)
/// or, with `error`, an error response; both carry MESSAGE-INTEGRITY and FINGERPRINT.
#[allow(clippy::too_many_arguments)]
pub(crate) fn respond(
    scratch: &mut [u8],
    out: &mut impl Outbox,
    stats: &mut IceStats,
    via: SocketRef,
    from: SocketAddr,
    msg: &StunMessage<'_>,
    local: &IceCredentials,
    error: Option<(u16, &str)>,
) {
    let written = write_response(scratch, from, msg, local, error);
    match written.ok().and_then(|n| scratch.get(..n)) {
        Some(bytes) => {
            out.push(via, from, bytes);
            stats.requests_answered += 1;
            if error.is_some_and(|(c, _)| c == code::ROLE_CONFLICT) {
                stats.role_conflicts += 1;
            }
        }
        None => stats.write_errors += 1,
    }
}

fn write_response(
    scratch: &mut [u8],
    from: SocketAddr,
    msg: &StunMessage<'_>,
    local: &IceCredentials,
    error: Option<(u16, &str)>,
) -> Result<usize, StunError> {
    let class = if error.is_some() {
        StunClass::ErrorResponse
    } else {
        StunClass::SuccessResponse
    };
    let mut w = StunWriter::new(scratch, class, BINDING, msg.transaction_id())?;
    match error {
        Some((code, reason)) => w.error_code(code, reason)?,
        None => w.xor_mapped_address(from)?,
    };
    w.finish(Some(local.pwd.as_bytes()), true)
}

/// Writes a connectivity check (RFC 8445 §7.1.1). `controlling` carries the tiebreaker in
/// ICE-CONTROLLING or, when false, ICE-CONTROLLED.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_check(
    scratch: &mut [u8],
    tid: [u8; 12],
    username: &[u8],
    priority: u32,
    controlling: bool,
    tiebreaker: u64,
    use_candidate: bool,
    remote_pwd: &[u8],
) -> Result<usize, StunError> {
    let mut w = StunWriter::new(scratch, StunClass::Request, BINDING, tid)?;
    w.username(username)?.priority(priority)?;
    if controlling {
        w.ice_controlling(tiebreaker)?;
    } else {
        w.ice_controlled(tiebreaker)?;
    }
    if use_candidate {
        w.use_candidate()?;
    }
    w.finish(Some(remote_pwd), true)
}

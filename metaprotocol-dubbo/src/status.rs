//! Dubbo response status codes (the header's status byte) and the status of each local reply.

use metaprotocol_core::LocalReplyKind;

/// The call completed; the body holds a result flag and the result.
pub const OK: u8 = 20;
/// The client gave up waiting (set by clients, never on the wire from a server).
pub const CLIENT_TIMEOUT: u8 = 30;
/// The server gave up waiting for the service.
pub const SERVER_TIMEOUT: u8 = 31;
/// The channel closed before the response arrived (set by clients).
pub const CHANNEL_INACTIVE: u8 = 35;
/// The request could not be decoded or was refused.
pub const BAD_REQUEST: u8 = 40;
/// The response could not be decoded (set by clients).
pub const BAD_RESPONSE: u8 = 50;
/// No service is exported under the requested path, version and group.
pub const SERVICE_NOT_FOUND: u8 = 60;
/// The service failed outside its declared exceptions.
pub const SERVICE_ERROR: u8 = 70;
/// The server framework failed.
pub const SERVER_ERROR: u8 = 80;
/// The client framework failed (set by clients).
pub const CLIENT_ERROR: u8 = 90;
/// The server's thread pool is exhausted: it takes no more work for now.
pub const SERVER_THREADPOOL_EXHAUSTED: u8 = 100;

/// True for a status by which the server says it refused the call without running it (its
/// thread pool was exhausted): another provider may take it, whatever the method does.
pub fn is_not_processed(status: u8) -> bool {
    status == SERVER_THREADPOOL_EXHAUSTED
}

/// The status of the response the proxy writes for a local reply of `kind`; see the table in
/// the crate documentation.
pub fn for_local_reply(kind: LocalReplyKind) -> u8 {
    match kind {
        LocalReplyKind::RouteNotFound => SERVICE_NOT_FOUND,
        LocalReplyKind::OverLimit | LocalReplyKind::Unavailable => SERVER_THREADPOOL_EXHAUSTED,
        LocalReplyKind::Timeout => SERVER_TIMEOUT,
        LocalReplyKind::BadRequest | LocalReplyKind::Unauthorized => BAD_REQUEST,
        _ => SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_a_failure_status() {
        for kind in LocalReplyKind::ALL {
            assert_ne!(for_local_reply(kind), OK, "{kind}");
        }
        assert_eq!(for_local_reply(LocalReplyKind::RouteNotFound), 60);
        assert_eq!(for_local_reply(LocalReplyKind::NoHealthyUpstream), 80);
        assert_eq!(for_local_reply(LocalReplyKind::Unauthorized), 40);
    }

    #[test]
    fn only_an_exhausted_thread_pool_means_not_processed() {
        assert!(is_not_processed(SERVER_THREADPOOL_EXHAUSTED));
        for status in [OK, SERVER_TIMEOUT, SERVICE_ERROR, SERVER_ERROR, BAD_REQUEST] {
            assert!(!is_not_processed(status), "{status}");
        }
    }
}

//! systemd readiness notification (the `sd_notify` protocol): one datagram such as
//! `READY=1` sent to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). `serve` sends `READY=1` only once the policy is loaded and checked and
//! the listener is bound, so a `Type=notify` unit (deploy/agent-warden.service) is "started"
//! exactly when agent-warden is serving; `STOPPING=1` once serving has ended (connections
//! drained, before the scratch disk is torn down).
//! Without `$NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` to the service manager; `Ok(false)` when there is none.
pub fn notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(target) => notify_to(&target, state).map(|_| true),
        None => Ok(false),
    }
}

/// Sends `state` to `target`, a socket path or `@abstract-name`.
pub fn notify_to(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let target = target.as_bytes();
    let addr = match target.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(target))?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// [`notify`], logging a failure instead of returning it (readiness is best effort: the
/// service manager then times the unit out, which fails closed).
pub fn notify_logged(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "notified the service manager"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "cannot notify the service manager"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(rx: &UnixDatagram) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn sends_to_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(received(&rx), b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("agent-warden-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(received(&rx), b"STOPPING=1");

        assert!(notify_to(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}

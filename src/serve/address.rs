//! Endpoint addresses in kata's syntax (`vsock://CID:PORT`, `unix:///path`), and
//! the listeners and connections they open. The relay sees only boxed halves.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

/// Where to listen or connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket path.
    Unix(PathBuf),
    /// A vsock address; CID `-1` (any) is written as `u32::MAX`.
    Vsock { cid: u32, port: u32 },
}

/// Text that is not an address in kata's syntax; `text` is what was given.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("{text:?}: a unix address needs an absolute path, e.g. unix:///run/kata-agent.sock")]
    RelativeUnixPath { text: String },
    #[error("{text:?}: a vsock address is vsock://CID:PORT, e.g. vsock://-1:1024")]
    VsockWithoutPort { text: String },
    #[error("{text:?}: bad vsock CID {cid:?}: {err}")]
    BadCid {
        text: String,
        cid: String,
        #[source]
        err: std::num::ParseIntError,
    },
    #[error("{text:?}: bad vsock port {port:?}: {err}")]
    BadPort {
        text: String,
        port: String,
        #[source]
        err: std::num::ParseIntError,
    },
    #[error("{text:?}: unsupported address; use vsock://CID:PORT or unix:///path")]
    Unsupported { text: String },
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.to_string();
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(AddressError::RelativeUnixPath { text });
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let Some((cid, port)) = rest.rsplit_once(':') else {
                return Err(AddressError::VsockWithoutPort { text });
            };
            let cid = match cid {
                "-1" => u32::MAX,
                c => c.parse::<u32>().map_err(|err| AddressError::BadCid {
                    text: text.clone(),
                    cid: c.to_string(),
                    err,
                })?,
            };
            let port = port.parse::<u32>().map_err(|err| AddressError::BadPort {
                text,
                port: port.to_string(),
                err,
            })?;
            return Ok(Address::Vsock { cid, port });
        }
        Err(AddressError::Unsupported { text })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Vsock {
                cid: u32::MAX,
                port,
            } => write!(f, "vsock://-1:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

/// The reading half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// An open connection, split into halves.
pub struct Conn {
    pub read: ReadHalf,
    pub write: WriteHalf,
    /// Who is on the other side (for logs).
    pub peer: String,
}

/// A bound listener.
pub enum Listener {
    Unix(tokio::net::UnixListener),
    Vsock(tokio_vsock::VsockListener),
}

impl Listener {
    /// Binds `addr`. A stale unix socket file at the path is replaced.
    pub async fn bind(addr: &Address) -> std::io::Result<Listener> {
        match addr {
            Address::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(path)?;
                    }
                }
                Ok(Listener::Unix(tokio::net::UnixListener::bind(path)?))
            }
            Address::Vsock { cid, port } => Ok(Listener::Vsock(tokio_vsock::VsockListener::bind(
                tokio_vsock::VsockAddr::new(*cid, *port),
            )?)),
        }
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> std::io::Result<Conn> {
        match self {
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok(Conn {
                    read: Box::new(r),
                    write: Box::new(w),
                    peer: "unix".into(),
                })
            }
            Listener::Vsock(l) => {
                let (s, a) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok(Conn {
                    read: Box::new(r),
                    write: Box::new(w),
                    peer: format!("vsock:{}:{}", a.cid(), a.port()),
                })
            }
        }
    }
}

/// Connects to `addr`.
pub async fn connect(addr: &Address) -> std::io::Result<Conn> {
    match addr {
        Address::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path).await?;
            let (r, w) = s.into_split();
            Ok(Conn {
                read: Box::new(r),
                write: Box::new(w),
                peer: addr.to_string(),
            })
        }
        Address::Vsock { cid, port } => {
            let s =
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?;
            let (r, w) = s.into_split();
            Ok(Conn {
                read: Box::new(r),
                write: Box::new(w),
                peer: addr.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kata_addresses() {
        assert_eq!(
            "vsock://-1:1024".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: u32::MAX,
                port: 1024
            }
        );
        assert_eq!(
            "vsock://3:1024".parse::<Address>().unwrap(),
            Address::Vsock { cid: 3, port: 1024 }
        );
        assert_eq!(
            "unix:///run/kata-agent.sock".parse::<Address>().unwrap(),
            Address::Unix(PathBuf::from("/run/kata-agent.sock"))
        );
        assert_eq!(
            "vsock://-1:1024".parse::<Address>().unwrap().to_string(),
            "vsock://-1:1024"
        );
    }

    #[test]
    fn rejects_bad_addresses_with_a_hint() {
        let kind = |e: &AddressError| match e {
            AddressError::RelativeUnixPath { .. } => "relative",
            AddressError::VsockWithoutPort { .. } => "no port",
            AddressError::BadCid { .. } => "cid",
            AddressError::BadPort { .. } => "port",
            AddressError::Unsupported { .. } => "unsupported",
        };
        for (bad, want) in [
            ("tcp://1.2.3.4:5", "unsupported"),
            ("unix://relative", "relative"),
            ("vsock://x:1", "cid"),
            ("vsock://1", "no port"),
            ("vsock://1:port", "port"),
        ] {
            let e = bad.parse::<Address>().unwrap_err();
            assert_eq!(kind(&e), want, "{e:?}");
            let text = e.to_string();
            assert!(text.starts_with(&format!("{bad:?}: ")), "{text}");
        }
    }
}

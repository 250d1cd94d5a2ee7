//! HTTP(S) requests to a service on (or reachable from) a host, carried by the host's SSH
//! connection: a `direct-tcpip` channel to `address:port`, TLS over it verified against the
//! cluster CA (or plain HTTP to the host's loopback), one HTTP/1.1 request with
//! `Connection: close`.
//!
//! This replaces starting python3 on the host for each REST call (about 0.1-0.2 s of CPU on a
//! small host): it works behind a jump host and opens no new port on the control machine.

use super::{short, Session, SshError};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// TLS client configuration that trusts exactly the certificates in `ca_pem`.
pub fn tls_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = crate::crypto::provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("cannot read the CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("cannot use the CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate given".into());
    }
    Ok(roots)
}

/// Like [`tls_config`], presenting a client certificate (`cert_pem`, its chain) and its key:
/// for services that require one (etcd).
pub fn tls_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::PrivateKeyDer;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the client certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no client certificate given".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("cannot read the client key: {e}"))?;
    let cfg = rustls::ClientConfig::builder_with_provider(crate::crypto::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("cannot use the client certificate: {e}"))?;
    Ok(Arc::new(cfg))
}

/// Pure: split a raw HTTP/1.x response into status and body (identity or chunked encoding).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let (head, rest) = split_head(raw).ok_or("no end of the response headers")?;
    let status_line = head.split("\r\n").next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let (chunked, length) = framing(&head);
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => return Err(format!("body cut short: {} of {n} bytes", rest.len())),
            None => rest.to_vec(),
        }
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunk cut short".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Send one request on `stream` and read the whole answer (until the server closes).
async fn exchange<S>(mut stream: S, req: &str) -> Result<Vec<u8>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    // TLS holds what it could not pass on yet (the SSH channel was busy) until a flush: without
    // one, a request may never leave, and the answer never come.
    stream
        .flush()
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // Until the response is whole (by its length or its last chunk), else until the server
    // closes: the answer does not wait for the close to travel back through the SSH channel.
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok(raw),
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if response_complete(&raw) {
                    return Ok(raw);
                }
            }
            // A server that closes without TLS close_notify (Python's http.server does): the
            // response is complete when its headers and body are (checked by the parser).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {
                return Ok(raw)
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
}

/// Pure: whether `raw` holds a whole response: its headers and a body of the length they give,
/// or a chunked body up to its last chunk. Without either, only the server's close tells.
fn response_complete(raw: &[u8]) -> bool {
    let Some((head, rest)) = split_head(raw) else {
        return false;
    };
    let (chunked, length) = framing(&head);
    if chunked {
        dechunk(rest).is_ok()
    } else {
        length.is_some_and(|n| rest.len() >= n)
    }
}

/// Pure: a response's header block and what follows it (None while the headers are not whole).
fn split_head(raw: &[u8]) -> Option<(std::borrow::Cow<'_, str>, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((String::from_utf8_lossy(&raw[..end]), &raw[end + 4..]))
}

/// Pure: from the response's header block, whether the body is chunked, and its length.
fn framing(head: &str) -> (bool, Option<usize>) {
    let mut chunked = false;
    let mut length = None;
    for l in head.split("\r\n").skip(1) {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    (chunked, length)
}

/// A byte stream to a service on the host: a channel of our own connection, or one through a
/// persisted connection.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Session {
    /// GET `path` from `address:port` as the host reaches it, through this connection: over
    /// TLS verified against `tls`'s CA when given (the server's certificate must name
    /// `address`), in plain HTTP otherwise (a service on the host's loopback).
    pub async fn http_get(
        &self,
        tls: Option<Arc<rustls::ClientConfig>>,
        address: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, SshError> {
        self.http_request(tls, address, port, path, None, timeout)
            .await
    }

    /// A GET (`body` None) or a POST of a JSON `body`, as [`Session::http_get`] describes.
    pub async fn http_request(
        &self,
        tls: Option<Arc<rustls::ClientConfig>>,
        address: &str,
        port: u16,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<HttpResponse, SshError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let method = if body.is_some() { "POST" } else { "GET" };
        let host_port = if address.contains(':') {
            format!("[{address}]:{port}")
        } else {
            format!("{address}:{port}")
        };
        let shown = format!("{method} {scheme}://{host_port}{path}");
        let fail = |why: String| {
            SshError::new(
                &self.host,
                format!("{}: {why}", short(&shown)),
                Some("check that the service runs on the host and that its certificate is the cluster CA's".into()),
            )
        };
        if let Some(d) = &self.inner.double {
            return super::double::request(
                d,
                &self.host,
                &format!("{scheme}://{host_port}{path}"),
                body,
            );
        }
        let _permit = self
            .inner
            .channels
            .acquire()
            .await
            .map_err(|e| self.lost(&shown, e))?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n");
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                b.len(),
                String::from_utf8_lossy(b)
            ));
        } else {
            req.push_str("\r\n");
        }
        let work = async {
            let stream: Box<dyn Io> = match &self.inner.persisted {
                Some(sock) => Box::new(super::persist::direct_tcpip(sock, address, port).await?),
                None => Box::new(
                    self.handle()
                        .map_err(|e| e.to_string())?
                        .channel_open_direct_tcpip(address, u32::from(port), "127.0.0.1", 0)
                        .await
                        .map_err(|e| format!("the host could not connect: {e}"))?
                        .into_stream(),
                ),
            };
            let raw = match tls {
                Some(tls) => {
                    let name = ServerName::try_from(address.to_string())
                        .map_err(|e| format!("not a valid server name: {e}"))?;
                    let tls_stream = tokio_rustls::TlsConnector::from(tls)
                        .connect(name, stream)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    exchange(tls_stream, &req).await?
                }
                None => exchange(stream, &req).await?,
            };
            parse_response(&raw)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.map_err(fail),
            Err(_) => Err(fail(format!("no answer within {} s", timeout.as_secs()))),
        }
    }

    /// [`Session::http_get`] over TLS.
    pub async fn https_get(
        &self,
        tls: Arc<rustls::ClientConfig>,
        address: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<HttpResponse, SshError> {
        self.http_get(Some(tls), address, port, path, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_identity_and_chunked_bodies() {
        let r = parse_response(
            b"HTTP/1.0 200 OK\r\nServer: BaseHTTP\r\nContent-Length: 11\r\n\r\n{\"a\": 1}xyzEXTRA",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{\"a\": 1}xyz");
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"ro\r\n5\r\nle\":1\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert!(!r.ok());
        assert_eq!(r.body_str(), "{\"role\":1");
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap();
        assert_eq!(r.body, b"all of it");
        assert!(parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\nshort").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn a_response_is_whole_by_its_length_or_its_last_chunk() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert!(response_complete(whole));
        assert!(!response_complete(&whole[..whole.len() - 1]));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Len"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        assert!(response_complete(chunked));
        assert!(!response_complete(&chunked[..chunked.len() - 7]));
        // No length and not chunked: only the server's close ends it.
        assert!(!response_complete(b"HTTP/1.0 200 OK\r\n\r\nall of it"));
    }

    #[test]
    fn a_ca_is_required() {
        assert!(tls_config("").is_err());
        assert!(
            tls_config("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}

//! HTTPS for the API and the dashboard: the plain listener's guards (a bound on open
//! connections, a deadline for the first request's headers) with TLS in front, and a
//! certificate that can be replaced while the server runs (on SIGHUP, or when its files
//! change) without dropping a connection: open live streams keep the session they have, and
//! the next handshake uses the new certificate.
//!
//! Handshakes run on tasks of their own, so a client that connects and says nothing holds up
//! only itself; those that finish within the header deadline are handed to the server.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use fieldline_broker::{tls_acceptor, TlsError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::http_listener::{accept_within, GuardedIo};

/// How often the certificate files are looked at for a change.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// Finished handshakes waiting for the server to take them.
const HANDED_OVER: usize = 128;

/// The certificate and key the listener serves, and the files they come from.
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
    /// The files' modification times when last loaded.
    loaded: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl Certificates {
    /// Loads the pair; an error names the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>, TlsError> {
        let acceptor = tls_acceptor(cert, key)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(acceptor),
            loaded: RwLock::new(modified(cert, key)),
        }))
    }

    /// Loads the files again; the certificate in use stays when they are not valid.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = modified(&self.cert, &self.key);
        let acceptor = tls_acceptor(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = stamps;
        metrics::counter!("fieldline_https_certificate_reloads_total", "result" => "ok")
            .increment(1);
        tracing::info!(cert = %self.cert.display(), "HTTPS certificate reloaded; open connections keep theirs");
        Ok(())
    }

    /// Reloads on SIGHUP and when the files change, until the process ends.
    pub async fn watch(self: Arc<Self>) {
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                Some(()) = next_hangup(&mut hangups) => true,
                _ = tick.tick() => false,
            };
            let changed = modified(&self.cert, &self.key)
                != *self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if !(asked || changed) {
                continue;
            }
            if let Err(e) = self.reload() {
                metrics::counter!("fieldline_https_certificate_reloads_total", "result" => "error")
                    .increment(1);
                // Not again for the same files: they are looked at when they change next.
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) =
                    modified(&self.cert, &self.key);
                tracing::error!(error = %e, "HTTPS certificate not reloaded; serving the previous one");
            }
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn next_hangup(hangups: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

fn modified(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (stamp(cert), stamp(key))
}

/// Accepted, handshaken connections, for `axum::serve`.
pub struct HttpsListener {
    ready: mpsc::Receiver<(GuardedIo<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl HttpsListener {
    /// Serves TLS on `inner`: at most `max_connections` open, `header_timeout` for the
    /// handshake and again for the first request's headers.
    pub fn new(
        inner: TcpListener,
        certificates: Arc<Certificates>,
        max_connections: usize,
        header_timeout: Duration,
    ) -> io::Result<HttpsListener> {
        let local = inner.local_addr()?;
        let (tx, ready) = mpsc::channel(HANDED_OVER);
        let slots = Arc::new(Semaphore::new(max_connections.max(1)));
        tokio::spawn(async move {
            loop {
                let (stream, peer, slot) = accept_within(&inner, &slots).await;
                if tx.is_closed() {
                    return;
                }
                let acceptor = certificates.acceptor();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let io = GuardedIo::new(tls, slot, header_timeout);
                            let _ = tx.send((io, peer)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("fieldline_http_tls_handshake_failures_total", "reason" => "refused").increment(1);
                            tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("fieldline_http_tls_handshake_failures_total", "reason" => "timeout").increment(1);
                        }
                    }
                });
            }
        });
        Ok(HttpsListener { ready, local })
    }
}

impl axum::serve::Listener for HttpsListener {
    type Io = GuardedIo<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

//! TLS as libpq does it: `sslmode` decides whether TLS is negotiated and what of the
//! server's certificate is checked; `sslrootcert` names the trusted roots, `sslcert` /
//! `sslkey` a client certificate.
//!
//! | sslmode       | TLS                      | certificate checked                          |
//! |---------------|--------------------------|----------------------------------------------|
//! | `disable`     | never                    | —                                            |
//! | `prefer`      | if the server offers it  | no (as `require`)                            |
//! | `require`     | yes, or fail             | no; with `sslrootcert`, the chain (libpq)    |
//! | `verify-ca`   | yes, or fail             | chain up to `sslrootcert`                    |
//! | `verify-full` | yes, or fail             | chain, and the host name (or IP) it names    |
//!
//! `sslrootcert=system` trusts the operating system's roots; without `sslrootcert` the
//! verifying modes read `~/.postgresql/root.crt`, as libpq does. Unix sockets never use
//! TLS (libpq ignores `sslmode` there too). One crypto provider (ring) serves every
//! connection: SQL sessions, the replication session and Redis.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::dsn::TlsParams;

/// libpq's `sslmode`, but `allow` (plain first, TLS only if refused), which we do not
/// offer: name `prefer` or `disable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is not checked unless a root certificate is named.
    Require,
    /// TLS or fail; the chain must lead to a trusted root.
    VerifyCa,
    /// TLS or fail; the chain must lead to a trusted root and name the host.
    VerifyFull,
}

impl SslMode {
    /// Whether a connection must fail rather than go on without TLS.
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }

    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported; use prefer (TLS when offered) or disable"
                        .to_owned(),
                );
            }
            other => {
                return Err(format!(
                    "invalid sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A DSN's TLS settings, checked and loaded: the rustls client config is built once, at
/// parse time, so a missing certificate file is a configuration error, not a failure at
/// the first reconnect.
pub struct TlsOptions {
    mode: SslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    /// What of the server's certificate is checked; `None` when TLS is off.
    verify: Option<Verify>,
    /// The TLS connector of SQL sessions, built once; `None` when TLS is off.
    connector: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl TlsOptions {
    pub(crate) fn from_params(p: &TlsParams, unix_socket: bool) -> Result<TlsOptions, String> {
        let mode = match &p.sslmode {
            Some(m) => SslMode::parse(m)?,
            None => SslMode::Prefer,
        };
        let client_cert = match (&p.sslcert, &p.sslkey) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            (Some(_), None) => return Err("sslcert is set but sslkey is not".to_owned()),
            (None, Some(_)) => return Err("sslkey is set but sslcert is not".to_owned()),
        };
        let mode = if unix_socket { SslMode::Disable } else { mode };
        // libpq: `require` with a root certificate checks the chain, as verify-ca.
        let verify = match mode {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require if p.sslrootcert.is_none() => Some(Verify::None),
            SslMode::Prefer | SslMode::Require | SslMode::VerifyCa => Some(Verify::Chain),
            SslMode::VerifyFull => Some(Verify::ChainAndName),
        };
        let root_cert = match (&p.sslrootcert, verify) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(Verify::Chain | Verify::ChainAndName)) => Some(default_root_cert()?),
            (None, _) => None,
        };
        let connector = match verify {
            None => None,
            Some(v) => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                client_config(v, root_cert.as_deref(), client_cert.as_ref())?,
            )),
        };
        Ok(TlsOptions {
            mode,
            root_cert,
            client_cert,
            verify,
            connector,
        })
    }

    /// The mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Whether the server's chain is checked (`verify-ca`, `verify-full`, or `prefer` /
    /// `require` with a root certificate, as libpq).
    pub fn verifies_chain(&self) -> bool {
        matches!(self.verify, Some(Verify::Chain | Verify::ChainAndName))
    }

    /// The root certificate file (`None`: not verifying, or `sslrootcert=system`).
    pub fn root_cert(&self) -> Option<&Path> {
        self.root_cert
            .as_deref()
            .filter(|p| p.as_os_str() != SYSTEM_ROOTS)
    }

    /// The client certificate and key files, for mutual TLS.
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// The TLS connector of SQL sessions; `None` when TLS is off.
    pub(crate) fn connector(&self) -> Option<&tokio_postgres_rustls::MakeRustlsConnect> {
        self.connector.as_ref()
    }
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

/// `sslrootcert=system`: the operating system's trusted roots.
const SYSTEM_ROOTS: &str = "system";

#[derive(Debug, Clone, Copy)]
enum Verify {
    None,
    Chain,
    ChainAndName,
}

/// Make ring the process's rustls provider, once; the replication transport and the
/// Redis client build their configs from the process default.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn default_root_cert() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home.map(|h| h.join(".postgresql/root.crt")) {
        Some(p) if p.exists() => Ok(p),
        _ => Err(
            "verifying the server needs its CA: set sslrootcert=/path/to/ca.pem (or \
             sslrootcert=system for the operating system's roots)"
                .to_owned(),
        ),
    }
}

fn root_store(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if path.as_os_str() == SYSTEM_ROOTS {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err("sslrootcert=system: the operating system has no trusted roots".into());
        }
        return Ok(roots);
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {}: no certificate in it",
            path.display()
        ));
    }
    Ok(roots)
}

fn client_config(
    verify: Verify,
    root_cert: Option<&Path>,
    client_cert: Option<&(PathBuf, PathBuf)>,
) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (verify, root_cert) {
        (Verify::None, _) | (_, None) => Arc::new(AnyCertificate { algorithms }),
        (v, Some(path)) => {
            let roots = Arc::new(root_store(path)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            match v {
                Verify::ChainAndName => webpki,
                _ => Arc::new(ChainOnly { inner: webpki }),
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
    }
}

/// `prefer`/`require` without a root certificate: encryption without authentication,
/// as libpq. The handshake's signatures are still checked against the certificate.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not compared.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

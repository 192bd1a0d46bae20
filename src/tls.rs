//! TLS for every connection the hooks make (PgBouncer's admin console, the upstream route
//! check, a TCP local Postgres): rustls with the `ring` crypto provider, behind tokio-postgres'
//! `MakeTlsConnect`.
//!
//! What is verified follows libpq's `sslmode` ([`crate::conninfo::Tls`]): `require` encrypts
//! without checking the certificate, `verify-ca` checks that the CA in `sslrootcert` signed
//! it, `verify-full` also checks the host name. Roots come only from that file: no bundle is
//! built in. The file is read at each connection, so a rotated Secret is picked up by the
//! long-running watchdog. The session offers channel binding (`tls-server-end-point`) so a
//! server that offers SCRAM-SHA-256-PLUS gets it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config, NoTls};

use crate::conninfo::{describe, Check, Tls};

/// Connects with `config`, TLS when `tls` is set (else plaintext), within `timeout`; `name`
/// overrides the host name the certificate is checked against (a PgBouncer target is dialled
/// by address but named by its URL's host). The connection runs on a spawned task, whose
/// handle is returned. The error is one line in the server's or the TLS layer's own words.
pub async fn connect(
    config: &Config,
    tls: Option<&Tls>,
    name: Option<&str>,
    timeout: Duration,
) -> Result<(Client, tokio::task::JoinHandle<()>), String> {
    let mut config = config.clone();
    config.connect_timeout(timeout).ssl_mode(match tls {
        Some(_) => SslMode::Require,
        None => SslMode::Disable,
    });
    match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
            let handle = tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok((client, handle))
        }
        Some(tls) => {
            let make = MakeRustls::new(tls, name)?;
            let (client, connection) = config.connect(make).await.map_err(|e| describe(&e))?;
            let handle = tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok((client, handle))
        }
    }
}

/// rustls on *ring*, cut to what a PostgreSQL or PgBouncer server needs, because every byte
/// ships in a ConfigMap (sizes in docs/benchmarks.md): TLS 1.3 and 1.2 with AES-GCM only
/// (OpenSSL servers always offer it; leaving ChaCha20 out saves 106 KB), key exchange on
/// P-256 (PostgreSQL's `ssl_ecdh_curve` default, in OpenSSL's default list too) and P-384, and
/// webpki's *ring* signature algorithms but Ed25519 (leaving X25519 and Ed25519 out saves
/// 53 KB). Built here rather than taken from `ring::default_provider()`, which would link
/// every suite and which rustls 0.23.48 marks deprecated (no post-quantum key exchange;
/// aws-lc-rs has that, and is 934 KB larger).
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite as cs, kx_group};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIGNATURES,
        secure_random: &Random,
        key_provider: &NoClientKeys,
    })
}

/// Randomness from *ring* (the OS's getrandom).
#[derive(Debug)]
struct Random;

impl rustls::crypto::SecureRandom for Random {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        use ring::rand::SecureRandom as _;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

/// The hooks present no client certificate, so they load no private key.
#[derive(Debug)]
struct NoClientKeys;

impl rustls::crypto::KeyProvider for NoClientKeys {
    fn load_private_key(
        &self,
        _: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        Err(rustls::Error::General(
            "client certificates are not supported".into(),
        ))
    }
}

/// What webpki verifies with *ring* (rustls' own table for its ring provider, which is private).
static SIGNATURES: rustls::crypto::WebPkiSupportedAlgorithms = {
    use webpki::ring as alg;
    rustls::crypto::WebPkiSupportedAlgorithms {
        all: &[
            alg::ECDSA_P256_SHA256,
            alg::ECDSA_P256_SHA384,
            alg::ECDSA_P384_SHA256,
            alg::ECDSA_P384_SHA384,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
            alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        mapping: &[
            (
                SignatureScheme::ECDSA_NISTP384_SHA384,
                &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384],
            ),
            (
                SignatureScheme::ECDSA_NISTP256_SHA256,
                &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
            ),
            (
                SignatureScheme::RSA_PSS_SHA512,
                &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA384,
                &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PSS_SHA256,
                &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA512,
                &[alg::RSA_PKCS1_2048_8192_SHA512],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA384,
                &[alg::RSA_PKCS1_2048_8192_SHA384],
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA256,
                &[alg::RSA_PKCS1_2048_8192_SHA256],
            ),
        ],
    }
};

/// The CA certificates in `path` (PEM), as a root store.
fn roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read sslrootcert {shown}: {e}"))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert {shown} is not PEM: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {shown}: a certificate is unusable: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {shown} holds no certificate"));
    }
    Ok(store)
}

/// A `MakeTlsConnect` for one connection's settings.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    name: Option<String>,
    explain: Arc<Explain>,
}

/// What the error messages name.
struct Explain {
    rootcert: Option<String>,
}

impl MakeRustls {
    pub fn new(tls: &Tls, name: Option<&str>) -> Result<MakeRustls, String> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match tls.check {
            Check::Encrypt => Arc::new(Unverified(provider.clone())),
            Check::Chain | Check::ChainAndName => {
                let path = tls.rootcert.as_deref().ok_or_else(|| {
                    "verifying the server needs sslrootcert (the CA file)".to_string()
                })?;
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(path)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                if tls.check == Check::Chain {
                    Arc::new(AnyName(webpki))
                } else {
                    webpki
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustls {
            config: Arc::new(config),
            name: name.map(str::to_string),
            explain: Arc::new(Explain {
                rootcert: tls.rootcert.as_ref().map(|p| p.display().to_string()),
            }),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let host = self.name.as_deref().unwrap_or(domain);
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a host name TLS can check"),
            )
        })?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
            explain: self.explain.clone(),
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    explain: Arc<Explain>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let host = server_name_text(&self.name);
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(RustlsStream)
                .map_err(|err| {
                    let cause = err
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<rustls::Error>())
                        .map(|e| explain(e, &host, self.explain.rootcert.as_deref()));
                    match cause {
                        Some(cause) => io::Error::new(io::ErrorKind::InvalidData, cause),
                        None => err,
                    }
                })
        })
    }
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(dns) => dns.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => String::from("?"),
    }
}

/// One sentence naming why the handshake failed, for the one-line error.
pub fn explain(err: &rustls::Error, host: &str, rootcert: Option<&str>) -> String {
    let ca = rootcert
        .map(|p| format!("the CA in sslrootcert {p}"))
        .unwrap_or_else(|| "the CA in sslrootcert".into());
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("the server's certificate is not signed by {ca} (wrong CA?)")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for host name {host:?} (sslmode=verify-full checks the name: connect by a name the certificate lists)"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".into()
            }
            other => format!("the server's certificate is not accepted: {other:?}"),
        },
        other => format!("TLS handshake failed: {other}"),
    }
}

/// `sslmode=require`: encrypted, the certificate not checked (libpq's meaning); the handshake
/// signatures still are, so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain to the CA is checked, the host name is not. webpki checks
/// the chain (and validity dates) before the name, so a name mismatch means all else passed.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// An established TLS session, with the `tls-server-end-point` channel binding.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session.peer_certificates().and_then(|certs| certs.first()) {
            Some(cert) => ChannelBinding::tls_server_end_point(end_point_hash(cert)),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the server certificate hashed with its signature's hash,
/// SHA-256 for MD5, SHA-1, SHA-256 and anything not recognised (as PostgreSQL does for the
/// usual RSA and ECDSA algorithms).
pub fn end_point_hash(cert: &[u8]) -> Vec<u8> {
    use ring::digest;
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], // sha384WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],       // ecdsa-with-SHA384
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], // sha512WithRSAEncryption
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],       // ecdsa-with-SHA512
    ];
    let oid = signature_oid(cert);
    let algorithm = match oid {
        Some(oid) if SHA384.contains(&oid) => &digest::SHA384,
        Some(oid) if SHA512.contains(&oid) => &digest::SHA512,
        _ => &digest::SHA256,
    };
    digest::digest(algorithm, cert).as_ref().to_vec()
}

/// The OID of `Certificate.signatureAlgorithm` (DER: SEQUENCE { tbs, SEQUENCE { OID, .. }, .. }).
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _tbs, rest) = der(certificate)?;
    let (tag, algorithm, _) = der(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walks_a_certificate_shape() {
        // SEQUENCE { SEQUENCE {01}, SEQUENCE { OID 2a8648ce3d040303 }, BIT STRING {} }
        let cert = [
            0x30, 0x12, 0x30, 0x01, 0x01, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
            0x04, 0x03, 0x03, 0x03, 0x01, 0x00,
        ];
        assert_eq!(
            signature_oid(&cert),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03][..])
        );
        assert_eq!(
            end_point_hash(&cert).len(),
            48,
            "ecdsa-with-SHA384 hashes with SHA-384"
        );
        assert_eq!(end_point_hash(b"not DER").len(), 32, "unknown: SHA-256");
        assert_eq!(signature_oid(&[0x30, 0x81]), None);
        assert_eq!(signature_oid(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
    }

    #[test]
    fn explanations_name_the_cause() {
        let e = |c| {
            explain(
                &rustls::Error::InvalidCertificate(c),
                "pgb",
                Some("/etc/ca.crt"),
            )
        };
        assert!(e(CertificateError::UnknownIssuer)
            .contains("not signed by the CA in sslrootcert /etc/ca.crt"));
        assert!(e(CertificateError::NotValidForName).contains("not valid for host name \"pgb\""));
        assert!(e(CertificateError::Expired).contains("expired"));
    }
}

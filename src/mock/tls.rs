//! The mock partner's certificates: a private CA and a server certificate for `localhost`,
//! `127.0.0.1` and `::1`, generated with rcgen on first start and reused after, so a daemon can
//! trust the mock by pointing `tls.ca_file` at `ca.pem`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Files in the TLS directory.
pub const CA_FILE: &str = "ca.pem";
/// With `require_client_cert`: the CA the mock trusts for clients, and a client identity.
pub const CLIENT_CA_FILE: &str = "client-ca.pem";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client.key";
const CERT_FILE: &str = "server.pem";
const KEY_FILE: &str = "server.key";

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct MockTlsError {
    pub path: PathBuf,
    pub message: String,
}

/// Loads the server certificate from `dir`, creating the CA and certificate if absent.
/// Returns the server TLS configuration and the CA file's path.
pub fn load_or_create(
    dir: &Path,
    require_client_cert: bool,
) -> Result<(Arc<rustls::ServerConfig>, PathBuf), MockTlsError> {
    let err = |path: &Path, message: String| MockTlsError {
        path: path.to_owned(),
        message,
    };
    let ca_path = dir.join(CA_FILE);
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !(ca_path.is_file() && cert_path.is_file() && key_path.is_file()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(dir, format!("cannot create TLS directory: {e}")))?;
        let (ca_pem, cert_pem, key_pem) =
            generate().map_err(|e| err(dir, format!("generating certificates: {e}")))?;
        write(&key_path, &key_pem, true).map_err(|e| err(&key_path, e.to_string()))?;
        write(&cert_path, &cert_pem, false).map_err(|e| err(&cert_path, e.to_string()))?;
        write(&ca_path, &ca_pem, false).map_err(|e| err(&ca_path, e.to_string()))?;
        tracing::info!(ca = %ca_path.display(), "generated a CA and server certificate for the mock partner");
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| err(&cert_path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&cert_path, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| err(&key_path, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions");
    let builder = if require_client_cert {
        let client_ca = dir.join(CLIENT_CA_FILE);
        if !client_ca.is_file() {
            let (ca_pem, cert_pem, key_pem) = generate_client()
                .map_err(|e| err(dir, format!("generating client certificates: {e}")))?;
            write(&dir.join(CLIENT_KEY_FILE), &key_pem, true)
                .map_err(|e| err(dir, e.to_string()))?;
            write(&dir.join(CLIENT_CERT_FILE), &cert_pem, false)
                .map_err(|e| err(dir, e.to_string()))?;
            write(&client_ca, &ca_pem, false).map_err(|e| err(&client_ca, e.to_string()))?;
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in
            CertificateDer::pem_file_iter(&client_ca).map_err(|e| err(&client_ca, e.to_string()))?
        {
            roots
                .add(c.map_err(|e| err(&client_ca, e.to_string()))?)
                .map_err(|e| err(&client_ca, e.to_string()))?;
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err(&client_ca, e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| err(&cert_path, e.to_string()))?;
    // HTTP/2 for clients that offer it (irisd with `publish.http2 = true`), HTTP/1.1 otherwise.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), ca_path))
}

/// A self-signed CA named `name`: its PEM and the issuer to sign with.
fn new_ca(name: &str) -> Result<(String, Issuer<'static, KeyPair>), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn generate() -> Result<(String, String, String), rcgen::Error> {
    let (ca_pem, issuer) = new_ca("irisd mock partner CA")?;

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

/// A client CA and one client certificate it issued (for irisd), as PEM: (CA, cert, key).
fn generate_client() -> Result<(String, String, String), rcgen::Error> {
    let (ca_pem, issuer) = new_ca("irisd mock partner client CA")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "irisd");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, contents: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = private;
    let mut f = opts.open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

//! The local CA's files, named as Istio's `cacerts` secret: `ca-key.pem`, `ca-cert.pem`,
//! `root-cert.pem` and optionally `cert-chain.pem`. Generated once (key mode 0600) and loaded on
//! every later start, so the root survives restarts; a supplied intermediate CA works the same.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;

use super::error::CaError;
use super::workload::parse_pem_certs;
use super::x509;

/// PKCS#8 PEM private key of the signing CA (mode 0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// PEM certificate of the signing CA (the root itself when self-signed).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// PEM root certificate peers trust; defaults to `ca-cert.pem` when absent.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Optional PEM chain from the signing CA up to the root, for a supplied intermediate CA.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// How long a generated root is valid.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What the files hold once read and checked.
pub(super) struct CaMaterial {
    pub key: KeyPair,
    pub ca_cert: CertificateDer<'static>,
    /// Certificates between the leaf and the root (empty for a self-signed CA).
    pub middle: Vec<CertificateDer<'static>>,
    pub root: CertificateDer<'static>,
}

pub(super) fn load_or_create(dir: &Path, trust_domain: &str) -> Result<CaMaterial, CaError> {
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    match (key_path.exists(), cert_path.exists()) {
        (true, true) => load(dir),
        (false, false) => {
            create(dir, trust_domain)?;
            load(dir)
        }
        (key, _) => Err(files_error(
            dir,
            format!(
                "{} exists but {} does not: restore the missing file, or remove both to generate a new root (every workload certificate must then be reissued)",
                if key { CA_KEY_FILE } else { CA_CERT_FILE },
                if key { CA_CERT_FILE } else { CA_KEY_FILE },
            ),
        )),
    }
}

fn load(dir: &Path) -> Result<CaMaterial, CaError> {
    let key_pem = read(dir, CA_KEY_FILE)?;
    let ca_pem = read(dir, CA_CERT_FILE)?;
    let ca_cert = first_cert(dir, &ca_pem, CA_CERT_FILE)?;
    let root = match dir.join(ROOT_CERT_FILE).exists() {
        true => first_cert(dir, &read(dir, ROOT_CERT_FILE)?, ROOT_CERT_FILE)?,
        false => ca_cert.clone(),
    };

    let facts =
        x509::facts(&ca_cert).map_err(|e| files_error(dir, format!("{CA_CERT_FILE}: {e}")))?;
    if !facts.is_ca {
        return Err(files_error(
            dir,
            format!("{CA_CERT_FILE} is not a CA certificate (basicConstraints CA:TRUE missing)"),
        ));
    }
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        files_error(
            dir,
            format!("{CA_KEY_FILE} is not a usable private key: {e}"),
        )
    })?;
    let cert_spki =
        x509::spki(&ca_cert).map_err(|e| files_error(dir, format!("{CA_CERT_FILE}: {e}")))?;
    if rcgen::PublicKeyData::subject_public_key_info(&key) != cert_spki {
        return Err(files_error(
            dir,
            format!("{CA_KEY_FILE} does not belong to {CA_CERT_FILE}: the files come from different CAs"),
        ));
    }

    let middle = if dir.join(CERT_CHAIN_FILE).exists() {
        let pem = read(dir, CERT_CHAIN_FILE)?;
        parse_pem_certs(&pem, CERT_CHAIN_FILE)
            .map_err(|e| files_error(dir, e.to_string()))?
            .into_iter()
            .filter(|c| c.as_ref() != root.as_ref())
            .collect()
    } else if ca_cert.as_ref() != root.as_ref() {
        vec![ca_cert.clone()]
    } else {
        Vec::new()
    };
    Ok(CaMaterial {
        key,
        ca_cert,
        middle,
        root,
    })
}

fn create(dir: &Path, trust_domain: &str) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| files_error(dir, format!("cannot create the directory: {e}")))?;
    let fail = |e: rcgen::Error| files_error(dir, format!("cannot generate the root CA: {e}"));
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, trust_domain);
    name.push(DnType::CommonName, "amesh root CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    // Backdated an hour so that nodes with a slightly late clock accept it at once.
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(super::local_ca::random_serial());
    let cert = params.self_signed(&key).map_err(fail)?;

    // Key first: a crash before the certificate is written leaves a state load_or_create
    // reports, never a certificate whose key is lost.
    write_atomic(dir, CA_KEY_FILE, &key.serialize_pem(), 0o600)?;
    write_atomic(dir, CA_CERT_FILE, &cert.pem(), 0o644)?;
    write_atomic(dir, ROOT_CERT_FILE, &cert.pem(), 0o644)?;
    tracing::info!(dir = %dir.display(), trust_domain, "generated a new root CA");
    Ok(())
}

/// Writes through a temporary file and a rename so a reader never sees half a file.
fn write_atomic(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<(), CaError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode above applies only when the file is created; a leftover from a crash keeps
        // its old mode, so set it explicitly before the secret goes in.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    result.map_err(|e| files_error(dir, format!("cannot write {}: {e}", path.display())))
}

fn read(dir: &Path, name: &str) -> Result<String, CaError> {
    fs::read_to_string(dir.join(name))
        .map_err(|e| files_error(dir, format!("cannot read {name}: {e}")))
}

fn first_cert(dir: &Path, pem: &str, name: &str) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = parse_pem_certs(pem, name).map_err(|e| files_error(dir, e.to_string()))?;
    Ok(certs.swap_remove(0))
}

fn files_error(dir: &Path, reason: String) -> CaError {
    CaError::CaFiles {
        dir: PathBuf::from(dir),
        reason,
    }
}

//! The CA root kept in a Kubernetes Secret, as istiod keeps its self-signed root: the Secret
//! `istio-system/istio-ca-secret` (type `istio.io/ca-root`) holding Istio's `cacerts` keys. The
//! first controller to start generates the root and creates the Secret; later starts, and other
//! replicas, use the root in the Secret, so workload certificates keep verifying across restarts
//! without a volume.
//!
//! A Secret that exists but cannot be used is an error, never replaced: replacing it would mean
//! a new root, and every certificate signed by the old one would stop verifying at once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use mesh::certs::{
    generate_root, CaError, CaPem, LocalCa, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE,
    ROOT_CERT_FILE,
};
use tracing::info;

/// Istio's Secret for its self-signed root.
pub const DEFAULT_CA_SECRET: &str = "istio-system/istio-ca-secret";
/// Istio's type for that Secret.
pub const CA_SECRET_TYPE: &str = "istio.io/ca-root";

/// A namespaced object's name, written `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    /// The namespace.
    pub namespace: String,
    /// The name within it.
    pub name: String,
}

impl FromStr for ObjectName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(ObjectName {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{s:?}: expected <namespace>/<name>")),
        }
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How the root came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// The Secret was there.
    Loaded,
    /// There was none: this controller generated a root and created the Secret.
    Created,
    /// Another controller created the Secret between our read and our create: its root is used.
    LostRace,
}

/// Why the CA could not be obtained from its Secret.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The Secret could not be read.
    #[error("cannot read the CA Secret {secret}: {source} (the controller needs `get` on secrets in namespace {})", secret.namespace)]
    Read {
        /// The Secret.
        secret: ObjectName,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// The Secret could not be created.
    #[error("cannot create the CA Secret {secret}: {source} (the controller needs `create` on secrets in namespace {}, and the namespace must exist)", secret.namespace)]
    Create {
        /// The Secret.
        secret: ObjectName,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// The Secret exists but one of its keys is missing or unusable.
    #[error("the CA Secret {secret} is unusable: key {key}: {reason}. The controller never overwrites it: repair it, or delete it to have a new root generated (every workload certificate must then be reissued)")]
    Malformed {
        /// The Secret.
        secret: ObjectName,
        /// The data key at fault.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Another controller created the Secret, and it was gone when read again.
    #[error("the CA Secret {secret} was created by another controller and deleted again before it could be read; restart the controller to try again")]
    Vanished {
        /// The Secret.
        secret: ObjectName,
    },
    /// A new root could not be made.
    #[error("cannot generate a root CA for the Secret {secret}: {source}")]
    Generate {
        /// The Secret.
        secret: ObjectName,
        /// Why (boxed: it is large, and this is the rare path).
        #[source]
        source: Box<CaError>,
    },
}

/// The CA whose root is in the Secret `secret`, creating the Secret with a new root if there is
/// none. Signs identities of `trust_domain`.
pub async fn load_or_create(
    client: Client,
    secret: &ObjectName,
    trust_domain: &str,
) -> Result<(LocalCa, Bootstrap), CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let read = |source| CaSecretError::Read {
        secret: secret.clone(),
        source,
    };
    if let Some(found) = api.get_opt(&secret.name).await.map_err(read)? {
        return Ok((
            from_secret(secret, &found, trust_domain)?,
            Bootstrap::Loaded,
        ));
    }

    let generate = |source| CaSecretError::Generate {
        secret: secret.clone(),
        source: Box::new(source),
    };
    let pem = generate_root(trust_domain).map_err(generate)?;
    // Checked before it is stored: a Secret we wrote must be one we can read back.
    let ca = LocalCa::from_pem(&pem, trust_domain).map_err(generate)?;
    match api
        .create(&PostParams::default(), &to_secret(secret, &pem))
        .await
    {
        Ok(_) => {
            info!(%secret, trust_domain, "generated a new root CA and stored it in its Secret");
            Ok((ca, Bootstrap::Created))
        }
        // 409: another replica created it first. Its root is the mesh's root; ours is dropped
        // before it signed anything.
        Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
            info!(%secret, "another controller created the CA Secret first; using its root");
            match api.get_opt(&secret.name).await.map_err(read)? {
                Some(found) => Ok((
                    from_secret(secret, &found, trust_domain)?,
                    Bootstrap::LostRace,
                )),
                None => Err(CaSecretError::Vanished {
                    secret: secret.clone(),
                }),
            }
        }
        Err(source) => Err(CaSecretError::Create {
            secret: secret.clone(),
            source,
        }),
    }
}

/// The Secret Istio's self-signed CA writes: the root is its own signing certificate, and
/// `cert-chain.pem` is empty.
fn to_secret(secret: &ObjectName, pem: &CaPem) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let root = pem.root_cert.as_deref().unwrap_or(&pem.ca_cert);
    let data = BTreeMap::from([
        (CA_CERT_FILE.to_owned(), bytes(&pem.ca_cert)),
        (CA_KEY_FILE.to_owned(), bytes(&pem.ca_key)),
        (
            CERT_CHAIN_FILE.to_owned(),
            bytes(pem.cert_chain.as_deref().unwrap_or_default()),
        ),
        (ROOT_CERT_FILE.to_owned(), bytes(root)),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            ..ObjectMeta::default()
        },
        type_: Some(CA_SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Reads and checks the CA in `found`; every failure names the key at fault.
fn from_secret(
    secret: &ObjectName,
    found: &Secret,
    trust_domain: &str,
) -> Result<LocalCa, CaSecretError> {
    let malformed = |key, reason: String| CaSecretError::Malformed {
        secret: secret.clone(),
        key,
        reason,
    };
    let empty = BTreeMap::new();
    let data = found.data.as_ref().unwrap_or(&empty);
    let text = |key: &'static str| -> Result<Option<String>, CaSecretError> {
        match data.get(key) {
            None => Ok(None),
            Some(value) => String::from_utf8(value.0.clone())
                .map(Some)
                .map_err(|_| malformed(key, "not UTF-8 text: expected PEM".into())),
        }
    };
    let required = |key| {
        text(key)?.ok_or_else(|| {
            let wanted = format!("{CA_CERT_FILE}, {CA_KEY_FILE} and {ROOT_CERT_FILE}");
            malformed(key, format!("missing (the Secret must hold {wanted})"))
        })
    };
    let pem = CaPem {
        ca_cert: required(CA_CERT_FILE)?,
        ca_key: required(CA_KEY_FILE)?,
        root_cert: Some(required(ROOT_CERT_FILE)?),
        // Istio writes an empty chain for a self-signed root.
        cert_chain: text(CERT_CHAIN_FILE)?.filter(|chain| !chain.trim().is_empty()),
    };
    LocalCa::from_pem(&pem, trust_domain).map_err(|e| match e {
        CaError::CaMaterial { item, reason } => malformed(item, reason),
        // from_pem reports nothing else; should that change, the message still says why.
        other => malformed(CA_CERT_FILE, other.to_string()),
    })
}

//! YAML shapes that need more than a derive: string matches, `presence: {}`, and service
//! ports written either as Istio's `{servicePort: targetPort}` map or as a list.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::state::error::Problem;
use crate::state::{ServicePort, StringMatch};

/// The map form of a [`StringMatch`]: exactly one key set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchForm {
    #[serde(default, alias = "Exact", skip_serializing_if = "Option::is_none")]
    exact: Option<String>,
    #[serde(default, alias = "Prefix", skip_serializing_if = "Option::is_none")]
    prefix: Option<String>,
    #[serde(default, alias = "Suffix", skip_serializing_if = "Option::is_none")]
    suffix: Option<String>,
    #[serde(default, alias = "Presence", skip_serializing_if = "Option::is_none")]
    presence: Option<Empty>,
}

impl TryFrom<StringMatchForm> for StringMatch {
    type Error = Problem;

    fn try_from(f: StringMatchForm) -> Result<Self, Problem> {
        let mut set = [
            f.exact.map(StringMatch::Exact),
            f.prefix.map(StringMatch::Prefix),
            f.suffix.map(StringMatch::Suffix),
            f.presence.map(|_| StringMatch::Presence),
        ]
        .into_iter()
        .flatten();
        match (set.next(), set.next()) {
            (Some(m), None) => Ok(m),
            (None, _) => Err(Problem::EmptyStringMatch),
            (Some(_), Some(_)) => Err(Problem::SeveralStringMatches),
        }
    }
}

impl From<StringMatch> for StringMatchForm {
    fn from(m: StringMatch) -> Self {
        let mut f = StringMatchForm::default();
        match m {
            StringMatch::Exact(v) => f.exact = Some(v),
            StringMatch::Prefix(v) => f.prefix = Some(v),
            StringMatch::Suffix(v) => f.suffix = Some(v),
            StringMatch::Presence => f.presence = Some(Empty),
        }
        f
    }
}

/// A value that carries nothing: written `{}`; `[]` (Istio's form) is also read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Empty;

impl Serialize for Empty {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EmptyVisitor;

        impl<'de> Visitor<'de> for EmptyVisitor {
            type Value = Empty;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an empty map {}")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Empty, E> {
                Ok(Empty)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Empty, A::Error> {
                match map.next_key::<IgnoredAny>()? {
                    None => Ok(Empty),
                    Some(_) => Err(de::Error::custom("expected an empty map {}")),
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Empty, A::Error> {
                match seq.next_element::<IgnoredAny>()? {
                    None => Ok(Empty),
                    Some(_) => Err(de::Error::custom("expected an empty map {}")),
                }
            }
        }

        d.deserialize_any(EmptyVisitor)
    }
}

/// A service's ports. Written as Istio's map `{80: 8080}` when no port has an app protocol,
/// else as a list of `{servicePort, targetPort, appProtocol}`; both are read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalPorts(pub Vec<ServicePort>);

impl LocalPorts {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for LocalPorts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.iter().all(|p| p.app_protocol.is_unknown()) {
            let mut map = s.serialize_map(Some(self.0.len()))?;
            for p in &self.0 {
                map.serialize_entry(&p.service_port, &p.target_port)?;
            }
            map.end()
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for LocalPorts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortsVisitor;

        impl<'de> Visitor<'de> for PortsVisitor {
            type Value = LocalPorts;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map {servicePort: targetPort} or a list of {servicePort, targetPort, appProtocol}")
            }

            fn visit_unit<E: de::Error>(self) -> Result<LocalPorts, E> {
                Ok(LocalPorts::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LocalPorts, A::Error> {
                let map =
                    BTreeMap::<u16, u16>::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(LocalPorts(
                    map.into_iter()
                        .map(|(service_port, target_port)| ServicePort {
                            service_port,
                            target_port,
                            app_protocol: Default::default(),
                        })
                        .collect(),
                ))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<LocalPorts, A::Error> {
                Vec::<ServicePort>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(LocalPorts)
            }
        }

        d.deserialize_any(PortsVisitor)
    }
}

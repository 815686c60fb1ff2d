//! A plain list of converted resources: what a [`super::Snapshot`] is built from, and what
//! the local file converts to and from.

use amesh_proto::istio::security::Authorization;
use amesh_proto::istio::workload::{address, Address};

use super::error::{ConvertError, FieldError, Problem, ResourceKind};
use super::{Policy, Service, Workload};

/// Workloads, services and policies, in the order they were given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
}

impl Model {
    /// Converts xDS resources, stopping at the first that does not convert.
    pub fn from_protos(
        addresses: &[Address],
        policies: &[Authorization],
    ) -> Result<Model, ConvertError> {
        let mut model = Model::default();
        for (i, a) in addresses.iter().enumerate() {
            model.push_address(a.clone()).map_err(|e| match e {
                // An empty Address has no name of its own: name it by position.
                AddressError::Empty => ConvertError::new(
                    ResourceKind::Address,
                    &format!("#{i}"),
                    FieldError::new("type", Problem::Missing),
                ),
                AddressError::Convert(e) => e,
            })?;
        }
        for p in policies {
            model.policies.push(Policy::from_proto(p.clone())?);
        }
        Ok(model)
    }

    fn push_address(&mut self, a: Address) -> Result<(), AddressError> {
        match a.r#type {
            Some(address::Type::Workload(w)) => self.workloads.push(Workload::from_proto(w)?),
            Some(address::Type::Service(s)) => self.services.push(Service::from_proto(s)?),
            None => return Err(AddressError::Empty),
        }
        Ok(())
    }
}

enum AddressError {
    Empty,
    Convert(ConvertError),
}

impl From<ConvertError> for AddressError {
    fn from(e: ConvertError) -> Self {
        AddressError::Convert(e)
    }
}

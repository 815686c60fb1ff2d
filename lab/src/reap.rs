//! Finding labs and removing them: `down` for one lab or all, and `cleanup_stale` for the
//! leftovers of crashed runs (a run directory whose lock nobody holds, or lab namespaces with no
//! run directory at all). Works from any process: it needs only names and `state.json`.

use std::collections::BTreeSet;

use crate::cluster::{LabError, STOP_GRACE};
use crate::hooks;
use crate::netns;
use crate::plan::{lab_of_netns, LabId};
use crate::process;
use crate::rundir::{self, GlobalLock};
use crate::state::LabState;
use crate::topology;

/// A lab found on this machine.
#[derive(Clone, Debug)]
pub struct LabListing {
    pub id: LabId,
    /// Someone holds the lab's lock (its owner process or its keeper).
    pub alive: bool,
    /// Its state file, if readable.
    pub state: Option<LabState>,
}

/// Ids of every lab with a run directory or at least one network namespace, sorted.
pub fn all_ids() -> Vec<LabId> {
    let mut ids: BTreeSet<LabId> = rundir::existing_ids().into_iter().collect();
    ids.extend(netns::list().iter().filter_map(|n| lab_of_netns(n)));
    ids.into_iter().collect()
}

/// Every lab on this machine.
pub fn list() -> Vec<LabListing> {
    all_ids()
        .into_iter()
        .map(|id| LabListing {
            alive: rundir::is_alive(&id),
            state: LabState::load(&id).ok(),
            id,
        })
        .collect()
}

/// The lab an id-less command means: the given one, else the only one there is.
pub fn resolve(id: Option<&LabId>) -> Result<LabId, LabError> {
    if let Some(id) = id {
        return Ok(id.clone());
    }
    let ids = all_ids();
    match ids.as_slice() {
        [] => Err(LabError::NoLab),
        [one] => Ok(one.clone()),
        _ => Err(LabError::Ambiguous(ids)),
    }
}

/// Removes lab `id`, alive or not: stops its processes, deletes its namespaces and its run
/// directory. A lab owned by a live process loses everything under it.
pub fn down(id: &LabId) -> Result<(), LabError> {
    let state = LabState::load(id).ok();
    destroy(id, state.as_ref())
}

/// Removes every lab on this machine; returns their ids.
pub fn down_all() -> Result<Vec<LabId>, LabError> {
    let ids = all_ids();
    let mut first_err = None;
    for id in &ids {
        if let Err(e) = down(id) {
            tracing::warn!(lab = %id, error = %e, "cannot remove lab");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(ids), Err)
}

/// Removes the leftovers of crashed labs: labs whose lock nobody holds, and lab namespaces
/// without a run directory. Live labs (also ones being built right now) are untouched, because
/// creating a lab takes its lock before making any namespace, under the same global lock held
/// here. Returns the ids removed.
pub fn cleanup_stale() -> Result<Vec<LabId>, LabError> {
    let _global = GlobalLock::acquire()?;
    let mut reaped = Vec::new();
    for id in rundir::existing_ids() {
        // Held until the lab is gone, so it cannot be revived meanwhile.
        let Some(_guard) = rundir::lock_if_stale(&id) else {
            continue;
        };
        tracing::info!(lab = %id, "removing the leftovers of a crashed lab");
        let state = LabState::load(&id).ok();
        destroy(&id, state.as_ref())?;
        reaped.push(id);
    }
    let orphans: BTreeSet<LabId> = netns::list()
        .iter()
        .filter_map(|n| lab_of_netns(n))
        .filter(|id| !rundir::lab_dir(id).exists())
        .collect();
    for id in orphans {
        tracing::info!(lab = %id, "removing lab namespaces without a run directory");
        destroy(&id, None)?;
        reaped.push(id);
    }
    Ok(reaped)
}

/// Stops and removes everything of lab `id`. The network goes before the run directory, so
/// that a lab with namespaces always has a run directory (what `cleanup_stale` relies on).
fn destroy(id: &LabId, state: Option<&LabState>) -> Result<(), LabError> {
    if let Some(state) = state {
        hooks::on_teardown(state);
        process::terminate(&state.processes, STOP_GRACE);
    }
    remove_network(id)?;
    rundir::remove_dir(&rundir::lab_dir(id))?;
    Ok(())
}

/// Kills whatever still lives in the lab's namespaces, then deletes them all.
pub(crate) fn remove_network(id: &LabId) -> Result<(), LabError> {
    let prefix = id.netns_prefix();
    for ns in netns::list().iter().filter(|n| n.starts_with(&prefix)) {
        process::kill_netns_processes(ns);
    }
    topology::destroy(id)?;
    // After the namespaces: with the pods gone there is nothing left for a pinned eBPF link
    // to guard, and a ztunnel that never got its pods' DELs may have left some.
    crate::mesh::remove_bpf_pins(id);
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown {
            id: id.clone(),
            detail: format!("namespaces {}", left.join(", ")),
        })
    }
}

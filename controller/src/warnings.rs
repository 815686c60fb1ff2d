//! Configuration problems found while translating: each is logged as it is found and kept, so a
//! caller (the lab, a config dump, a test) can show them to the operator.

/// Collected warnings, in the order they were found.
#[derive(Debug, Default)]
pub(crate) struct Warnings(Vec<String>);

impl Warnings {
    /// Records a problem and logs it.
    pub(crate) fn push(&mut self, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!("{message}");
        self.0.push(message);
    }

    /// The warnings, sorted and without repeats (the same problem seen from two pods is
    /// reported once).
    pub(crate) fn into_sorted(mut self) -> Vec<String> {
        self.0.sort();
        self.0.dedup();
        self.0
    }
}

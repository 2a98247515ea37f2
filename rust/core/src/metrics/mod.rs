//! What metrics need recorded as things happen: a histogram that many
//! threads fill at once without a lock.

pub mod histogram;

pub use histogram::Histogram;

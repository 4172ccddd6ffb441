//! What the database records of a consumer group's members (`streamlab_members`), as
//! [`super::Reader::recorded_members`] reads it. Merging it with the coordinator's view of the
//! group is the command layer's (`cmd::members`): the database layer does no Kafka I/O.

/// A member's `streamlab_members` row: what it last recorded holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub generation: i32,
    pub partitions: Vec<i32>,
    /// Host and process id.
    pub client: String,
}

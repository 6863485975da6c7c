//! The control plane over local keys behind fault-injecting backends, by topic: the reference
//! API's JSON, field-level validation, classified validation outcomes, write-once attachment,
//! rotation and rewrap, deletion and revocation, restart, audit events.

#[path = "../common/mod.rs"]
mod common;
mod fixture;

mod attachment;
mod deletion;
mod field_validation;
mod json_shapes;
mod persistence;
mod rotation;
mod validate;

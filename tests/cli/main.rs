//! The `cmek` command-line tool, run as a process.

mod control_plane;
mod envelopes;
mod mistakes;
mod objects;
mod postgres_state;
mod streams;
mod support;

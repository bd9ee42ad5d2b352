//! The store's tests. The behavioural suite runs against every backend
//! (memory, a SQLite file, a PostgreSQL schema); PostgreSQL-only proofs (the
//! gap-free feed under 16 writers) have their own module.

mod batch;
mod behaviour;
mod cached;
mod cancelled;
mod gap_free;
mod group;
mod in_flight;
mod insert_shape;
mod job_list;
mod positions;
mod records;
mod restart;
mod status_rows;
mod support;
mod tail;
mod tampering;
mod transport;
mod upcasting;
mod wake;
mod wal;
mod webhooks;

//! The job-queue door (RabbitMQ, through lapin): workers on any number of
//! machines take jobs from shared queues and publish replies to each job's
//! `reply_to` queue. See the README's "Job queue" section for the topology
//! and the message schema; [`job`] runs a job on the core service exactly
//! as the HTTP door would.
//!
//! `worker` keeps the broker connection and its consumers; `handle`
//! settles one delivery (checks, run, replies, ack, retry or dead letter);
//! `publish` is the per-job channel with confirms and mandatory replies;
//! `headers` reads the counters a message carries, saturating.

mod handle;
mod headers;
pub mod job;
mod publish;
pub mod topology;
mod worker;

pub use topology::Topology;
pub use worker::{run, WorkerConfig, DEFAULT_MAX_REDELIVERIES};

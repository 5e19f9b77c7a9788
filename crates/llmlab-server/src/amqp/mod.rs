//! The job-queue door (RabbitMQ, through lapin): workers on any number of
//! machines take jobs from shared queues and publish replies to each job's
//! `reply_to` queue. See the README's "Job queue" section for the topology
//! and the message schema; [`job`] runs a job on the core service exactly
//! as the HTTP door would.

pub mod job;
pub mod topology;
mod worker;

pub use topology::Topology;
pub use worker::{run, WorkerConfig};

//! Runtime plumbing shared by the three services, written once.
//!
//! The shape of a service ([`service`]: configure, prepare the database, serve
//! the operational endpoints, purge, run, stop) and its command line ([`cli`]);
//! configuration from the environment, JSON logs, the shutdown signal, the
//! PostgreSQL pool, sessions, migrations and store errors, the RabbitMQ
//! connection, topology and broker users' permissions (and the management
//! API that sets them), publishing with confirms, retry policies, the
//! HTTP server skeleton, and the metrics' ways out of the process ([`export`]).

pub mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod db;
pub mod endpoints;
pub mod export;
pub mod http;
pub mod management;
pub mod metrics;
pub mod publish;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

//! Runtime plumbing shared by the three services, written once.
//!
//! Configuration from the environment, JSON logs, the shutdown signal, the
//! PostgreSQL pool and start-up (create database, migrate), the RabbitMQ
//! connection and topology, publishing with confirms, retry policies and the
//! HTTP server skeleton.

pub mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod db;
pub mod http;
pub mod metrics;
pub mod publish;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

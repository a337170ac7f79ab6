//! The orders API: `POST /orders` stores the order and its `OrderCreated` event in
//! one PostgreSQL transaction. It never talks to the broker; the outbox relay does.

pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod routes;
pub mod startup;
pub mod store;

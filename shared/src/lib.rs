//! The person-enrichment backend: domain model, use cases, ports and their AWS and provider
//! adapters. The Lambda function crates are thin adapters over this crate.

#![warn(missing_docs)]

pub mod auth;
pub mod batch;
pub mod budget;
pub mod cancel;
pub mod config;
pub mod credits;
pub mod domain;
pub mod enrichment;
pub mod error;
pub mod http;
pub mod identity;
pub mod limiter;
pub mod metrics;
pub mod people;
pub mod providers;
pub mod queue;
pub mod secrets;
pub mod store;
pub mod webhooks;
pub mod worker;

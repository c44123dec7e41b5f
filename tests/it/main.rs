//! conveyor's integration tests: one binary, real services from `scripts/stack`
//! (LocalStack, PostgreSQL, the Bolt server). Run them with `scripts/test`, or after
//! `eval "$(scripts/stack env)"`.

mod batches;
mod buckets;
mod defer;
mod delivery;
mod deploy;
mod dispatch;
mod dlq;
mod drops;
mod engine;
mod fairness;
mod fake_llm;
mod fault_proxy;
mod faults;
mod fifo;
mod formats;
mod foundation;
mod hardening;
mod helpers;
mod holds;
mod infra;
mod layers;
mod logs;
mod notifications;
mod notify;
mod outages;
mod pipelines;
mod publish;
mod ship;
mod traces;

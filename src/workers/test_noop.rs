//! `test_noop` (test-only, `jobs.test_workers`): completes at once. The benchmark burns these
//! down to measure the engine itself.

use futures_util::future::BoxFuture;

use crate::jobs::{Job, JobContext, JobResult, Outcome, Scope, Worker};

pub const NAME: &str = "test_noop";

pub struct TestNoop;

impl Worker for TestNoop {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Does nothing: tests may start it as a tenant.
    fn scope(&self) -> Scope {
        Scope::Tenant
    }

    fn perform<'a>(&'a self, _ctx: &'a JobContext, _job: &'a Job) -> BoxFuture<'a, JobResult> {
        Box::pin(async { Ok(Outcome::Complete) })
    }
}

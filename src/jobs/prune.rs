//! The prune job. Not built yet (issue #5): it refuses with a clear error rather than
//! pretending to have done anything.

use super::{JobCtx, JobError, JobResult};

pub fn run(_ctx: &mut JobCtx<'_>) -> Result<JobResult, JobError> {
    Err(JobError::NotBuilt("prune"))
}

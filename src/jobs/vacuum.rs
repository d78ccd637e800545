//! The vacuum job. Not built yet (issue #6): it refuses with a clear error rather than
//! pretending to have done anything.

use super::{JobCtx, JobError, JobResult};

pub fn run(_ctx: &mut JobCtx<'_>) -> Result<JobResult, JobError> {
    Err(JobError::NotBuilt("vacuum"))
}

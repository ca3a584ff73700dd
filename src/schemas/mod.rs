//! Data (plan §3.1, §4): one module per table, laid out as in the plan. Every function here that
//! touches a tenant table takes the `&mut Conn` handed out by [`crate::repo::Repo::tenant_tx`],
//! so it runs inside a transaction whose tenant context row-level security enforces.

pub mod schema;

/// S1–S5 operational data.
pub mod vsm {
    pub mod episode;
    pub mod policy;
    pub mod system_state;
}

/// Tenancy and stored-artifact metadata.
pub mod storage {
    pub mod api_key;
    pub mod artifact;
    pub mod tenant;
}

/// Background task history.
pub mod jobs {
    pub mod task_log;
}

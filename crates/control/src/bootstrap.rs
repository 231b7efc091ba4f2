//! First-start bootstrap.
use crate::state::AppState;
use serde::Serialize;
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapInfo {}
pub async fn ensure(state: &AppState) -> anyhow::Result<Option<BootstrapInfo>> {
    let _ = state;
    Ok(None)
}

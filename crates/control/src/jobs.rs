//! Background revalidation.
use crate::state::AppState;
use tokio::sync::watch;
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let _ = state;
    let _ = shutdown.wait_for(|s| *s).await;
}

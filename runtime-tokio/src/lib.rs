//! tokio frontend (in progress)

//! `[admin]`: the admin API's listener and operator token.

use serde::Deserialize;

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// The operator's bearer token (sees every merchant).
    pub token: String,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

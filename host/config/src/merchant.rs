//! `[[merchant]]`: a tenant, and its own admin token.

use serde::Deserialize;

/// `[[merchant]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MerchantConfig {
    /// Merchant id.
    pub id: String,
    /// Admin token scoped to this merchant.
    pub token: Option<String>,
}

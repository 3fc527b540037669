//! `[telemetry]`: where traces of each event's way go (OpenTelemetry over OTLP/HTTP).

use serde::Deserialize;

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector (`http://host:4318`, or its full `/v1/traces` URL); without it
    /// no span is recorded.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { otlp_endpoint: None, service_name: "payflow-edge".into() }
    }
}

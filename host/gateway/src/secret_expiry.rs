//! Warnings about endpoint secrets that end (`not_after`): once when one is within a day of its
//! end, so the rotation is finished in time, and once when it has ended and is refused. Checked
//! at start-up and then every hour, so a gateway that runs for weeks still warns the day before.
//!
//! It must never print a secret: a secret is named by its endpoint and its place in the list.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use payflow_clock::Clock;
use payflow_config::Config;
use tokio::sync::watch;

/// How long before its end a secret is warned about.
pub const WARN_BEFORE_SECS: i64 = 24 * 3600;
/// How often the ends are looked at again.
const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Which warning a secret got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Within [`WARN_BEFORE_SECS`] of its end.
    EndsSoon,
    /// Past its end: refused.
    Ended,
}

/// One warning: endpoint path, the secret's index in `secrets`, its end, and the stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The endpoint's path.
    pub endpoint: String,
    /// The secret's place in the endpoint's `secrets` (from 0).
    pub index: usize,
    /// Its last accepted unix second.
    pub not_after: i64,
    /// Which warning.
    pub stage: Stage,
}

/// The warnings due at `now` that `given` does not hold yet (and adds them to it).
pub fn due(config: &Config, now: i64, given: &mut HashSet<(String, usize, Stage)>) -> Vec<Notice> {
    let mut notices = Vec::new();
    for endpoint in &config.endpoint {
        for (index, secret) in endpoint.secrets.iter().enumerate() {
            let Some(not_after) = secret.not_after() else { continue };
            let stage = if now > not_after {
                Stage::Ended
            } else if not_after - now <= WARN_BEFORE_SECS {
                Stage::EndsSoon
            } else {
                continue;
            };
            if given.insert((endpoint.path.clone(), index, stage)) {
                notices.push(Notice { endpoint: endpoint.path.clone(), index, not_after, stage });
            }
        }
    }
    notices
}

fn log(notice: &Notice, now: i64) {
    let at = crate::samples::rfc3339(notice.not_after);
    let secret = format!("secrets[{}]", notice.index);
    match notice.stage {
        Stage::EndsSoon => tracing::warn!(
            endpoint = %notice.endpoint,
            secret = %secret,
            not_after = %at,
            hours_left = (notice.not_after - now) / 3600,
            "a secret stops being accepted within a day: finish the rotation (PayFlow signing with the new secret), then remove it"
        ),
        Stage::Ended => tracing::warn!(
            endpoint = %notice.endpoint,
            secret = %secret,
            not_after = %at,
            "a secret has ended and is refused: remove it from the configuration"
        ),
    }
}

/// Logs the warnings due now, then every `CHECK_EVERY` until `shutdown`.
pub async fn watch(config: Arc<Config>, clock: Arc<dyn Clock>, mut shutdown: watch::Receiver<bool>) {
    let mut given = HashSet::new();
    loop {
        let now = clock.wall_secs();
        for notice in due(&config, now, &mut given) {
            log(&notice, now);
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: i64 = 1_798_761_599; // 2026-12-31T23:59:59Z

    fn config() -> Config {
        Config::parse(
            r#"
[[endpoint]]
path = "/wh"
secrets = ["current", { secret = "old", not_after = "2026-12-31T23:59:59Z" }]
"#,
            |_| None,
        )
        .unwrap()
    }

    #[test]
    fn a_secret_is_warned_about_once_a_day_before_its_end_and_once_after() {
        let config = config();
        let mut given = HashSet::new();
        assert_eq!(due(&config, END - WARN_BEFORE_SECS - 1, &mut given), vec![], "too early");
        let soon = due(&config, END - WARN_BEFORE_SECS, &mut given);
        assert_eq!(
            soon,
            vec![Notice { endpoint: "/wh".into(), index: 1, not_after: END, stage: Stage::EndsSoon }]
        );
        assert_eq!(due(&config, END, &mut given), vec![], "warned already");
        let ended = due(&config, END + 1, &mut given);
        assert_eq!(ended.iter().map(|n| n.stage).collect::<Vec<_>>(), [Stage::Ended]);
        assert_eq!(due(&config, END + 3600, &mut given), vec![]);
    }
}

//! The smallest plugin: continues every event unchanged. A template to start from, and what
//! bench/plugins.sh measures the host's own per-event cost with (instantiation, passing the
//! event in, taking the outcome out).
use payflow_plugin::{export_plugin, Event, Outcome, Plugin};
struct Noop;
impl Plugin for Noop {
    fn handle(_: Event) -> Result<Outcome, String> {
        Ok(Outcome::proceed())
    }
}
export_plugin!(Noop);

//! `start`, `stop`, `restart`, `pause` and `unpause` (the plugin's commands and the dashboard's
//! buttons): what to send for a VM, as pure functions of the VM read.
//!
//! Power changes are designed not to fight GitOps. A `Manual` VM is started and stopped through
//! the `ferry.dev/power` annotation, which Argo CD and Flux leave alone when it is not in Git. For
//! `Always`, `RerunOnFailure` and `Halted` VMs starting or stopping means changing
//! `spec.runStrategy`, which a GitOps tool with self-heal reverts: the plugin refuses and explains
//! unless `--force-spec` is given.

use crate::api::virtual_machine::{PAUSE_ANNOTATION, POWER_ANNOTATION, RESTART_ANNOTATION};
use crate::api::{RunStrategy, VirtualMachine, VmPhase};
use crate::plan::lifecycle::Power;
use kube::ResourceExt;
use serde_json::{Value, json};

/// Which way `start` / `stop` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Start,
    Stop,
}

/// What a command will do to a VirtualMachine.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// Send this JSON merge patch; the text says what it does.
    Patch(Value, String),
    /// Nothing to change; the text says why.
    Nothing(String),
    /// Refused; the text says what to do instead.
    Refuse(String),
}

fn annotation_patch(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect();
    json!({ "metadata": { "annotations": map } })
}

fn phase(vm: &VirtualMachine) -> Option<VmPhase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

fn power_annotation(vm: &VirtualMachine) -> Option<Power> {
    vm.annotations()
        .get(POWER_ANNOTATION)
        .and_then(|v| Power::parse(v))
}

/// Why `start`/`stop` does not patch the spec by default.
fn gitops_refusal(name: &str, strategy: RunStrategy, want: Want) -> String {
    let (verb, target) = match want {
        Want::Start => ("start", "Always"),
        Want::Stop => ("stop", "Halted"),
    };
    format!(
        "{name} has runStrategy {strategy:?}, so to {verb} it the spec must change \
         (spec.runStrategy: {target}). If the VM is managed by GitOps (Argo CD or Flux with \
         self-heal), the spec in Git wins: the change is reverted and ferry undoes the {verb}.\n\
         Instead, either change spec.runStrategy in Git, or set runStrategy: Manual in Git and use \
         `kubectl ferry start|stop`, which set the {POWER_ANNOTATION} annotation (annotations that \
         are not in Git are not compared, so they are not reverted).\n\
         To patch spec.runStrategy to {target} anyway: kubectl ferry {verb} {name} --force-spec"
    )
}

/// What `start` or `stop` sends.
pub fn power_plan(vm: &VirtualMachine, want: Want, force_spec: bool, token: &str) -> Plan {
    let name = vm.name_any();
    let strategy = vm.run_strategy();
    if strategy == RunStrategy::Manual {
        let (value, wanted) = match want {
            Want::Start => ("on", Power::On),
            Want::Stop => ("off", Power::Off),
        };
        if power_annotation(vm) == Some(wanted) {
            return Plan::Nothing(format!("{name}: {POWER_ANNOTATION} is already {value}"));
        }
        let effect = match want {
            Want::Start => "ferry starts it",
            Want::Stop => "ferry shuts the guest down (forced off after the grace period)",
        };
        return Plan::Patch(
            annotation_patch(&[(POWER_ANNOTATION, value)]),
            format!("{name}: set {POWER_ANNOTATION}={value}; {effect}"),
        );
    }
    match (want, strategy) {
        (Want::Start, RunStrategy::Always) => Plan::Nothing(format!(
            "{name} has runStrategy Always: ferry keeps it running already"
        )),
        (Want::Stop, RunStrategy::Halted) => Plan::Nothing(format!(
            "{name} has runStrategy Halted: ferry keeps it stopped already"
        )),
        (Want::Start, RunStrategy::RerunOnFailure) => {
            let stopped = phase(vm) == Some(VmPhase::Stopped)
                || vm.status.as_ref().is_some_and(|s| s.stopped_by_guest);
            if stopped {
                Plan::Patch(
                    annotation_patch(&[(RESTART_ANNOTATION, token)]),
                    format!(
                        "{name}: set {RESTART_ANNOTATION}={token}; ferry starts it again (runStrategy RerunOnFailure unchanged)"
                    ),
                )
            } else {
                Plan::Nothing(format!(
                    "{name} has runStrategy RerunOnFailure and is not stopped: nothing to start"
                ))
            }
        }
        (_, _) if !force_spec => Plan::Refuse(gitops_refusal(&name, strategy, want)),
        (_, _) => {
            let target = match want {
                Want::Start => RunStrategy::Always,
                Want::Stop => RunStrategy::Halted,
            };
            Plan::Patch(
                json!({ "spec": { "runStrategy": target } }),
                format!(
                    "{name}: set spec.runStrategy={target:?} (was {strategy:?}); a GitOps tool with self-heal will set it back"
                ),
            )
        }
    }
}

/// What `restart` sends.
pub fn restart_plan(vm: &VirtualMachine, token: &str) -> Plan {
    let name = vm.name_any();
    match vm.run_strategy() {
        RunStrategy::Halted => Plan::Refuse(format!(
            "{name} has runStrategy Halted, which keeps it stopped: a restart would do nothing. \
             Change spec.runStrategy (in Git, if GitOps manages it) or use `kubectl ferry start {name} --force-spec`."
        )),
        RunStrategy::Manual => match power_annotation(vm) {
            Some(Power::Off) => Plan::Refuse(format!(
                "{name} is powered off ({POWER_ANNOTATION}=off): use `kubectl ferry start {name}`"
            )),
            Some(Power::On) => Plan::Patch(
                annotation_patch(&[(RESTART_ANNOTATION, token)]),
                format!(
                    "{name}: set {RESTART_ANNOTATION}={token}; ferry shuts it down and starts it again"
                ),
            ),
            None if phase(vm) == Some(VmPhase::Running) => Plan::Patch(
                // Without power=on a Manual VM stays off once the restart has stopped it.
                annotation_patch(&[(RESTART_ANNOTATION, token), (POWER_ANNOTATION, "on")]),
                format!(
                    "{name}: set {RESTART_ANNOTATION}={token} and {POWER_ANNOTATION}=on; ferry shuts it down and starts it again"
                ),
            ),
            None => Plan::Refuse(format!(
                "{name} (runStrategy Manual) is not running: use `kubectl ferry start {name}`"
            )),
        },
        RunStrategy::Always | RunStrategy::RerunOnFailure => Plan::Patch(
            annotation_patch(&[(RESTART_ANNOTATION, token)]),
            format!(
                "{name}: set {RESTART_ANNOTATION}={token}; ferry shuts it down and starts it again"
            ),
        ),
    }
}

/// What `pause` sends: the pause annotation, for a running VM.
pub fn pause_plan(vm: &VirtualMachine) -> Plan {
    let name = vm.name_any();
    if vm.annotations().get(PAUSE_ANNOTATION).map(String::as_str) == Some("true") {
        return Plan::Nothing(format!("{name}: {PAUSE_ANNOTATION} is already true"));
    }
    match phase(vm) {
        Some(VmPhase::Running) => Plan::Patch(
            annotation_patch(&[(PAUSE_ANNOTATION, "true")]),
            format!(
                "{name}: set {PAUSE_ANNOTATION}=true; ferry pauses its vCPUs (memory and devices stay), `kubectl ferry unpause {name}` lets it run"
            ),
        ),
        other => Plan::Refuse(format!(
            "{name} is {}: only a running VM can be paused",
            other.map_or("without a phase".to_string(), |p| p.to_string())
        )),
    }
}

/// What `unpause` sends: the pause annotation removed.
pub fn unpause_plan(vm: &VirtualMachine) -> Plan {
    let name = vm.name_any();
    if !vm.annotations().contains_key(PAUSE_ANNOTATION) {
        return Plan::Nothing(format!(
            "{name} is not paused on request ({PAUSE_ANNOTATION} is not set)"
        ));
    }
    Plan::Patch(
        json!({ "metadata": { "annotations": { PAUSE_ANNOTATION: null } } }),
        format!("{name}: removed {PAUSE_ANNOTATION}; ferry lets it run again"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(strategy: Option<&str>, annotations: Value, status: Value) -> VirtualMachine {
        let mut spec = json!({"hostPool": "rack1", "cpu": {"cores": 1}, "memory": "1Gi"});
        if let Some(s) = strategy {
            spec["runStrategy"] = json!(s);
        }
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web-1", "namespace": "vms", "generation": 2,
                         "annotations": annotations},
            "spec": spec,
            "status": status,
        }))
        .expect("valid VM")
    }

    fn running() -> Value {
        json!({"phase": "Running", "host": "hv-1", "observedGeneration": 2,
               "interfaces": [{"name": "eth0", "mac": "52:54:00:00:00:01", "ipAddress": "10.0.0.5"}],
               "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                               "message": "running on host hv-1", "observedGeneration": 2,
                               "lastTransitionTime": "2026-01-10T08:00:00Z"}]})
    }

    fn stopped() -> Value {
        json!({"phase": "Stopped", "host": "hv-1", "observedGeneration": 2})
    }

    fn patch_of(plan: Plan) -> Value {
        match plan {
            Plan::Patch(p, _) => p,
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    #[test]
    fn manual_vms_are_powered_by_annotation() {
        let v = vm(Some("Manual"), json!({}), stopped());
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, false, "t1")),
            json!({"metadata": {"annotations": {"ferry.dev/power": "on"}}})
        );
        assert_eq!(
            patch_of(power_plan(&v, Want::Stop, false, "t1")),
            json!({"metadata": {"annotations": {"ferry.dev/power": "off"}}})
        );
        // --force-spec never touches the spec of a Manual VM.
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, true, "t1")),
            json!({"metadata": {"annotations": {"ferry.dev/power": "on"}}})
        );
        let on = vm(Some("Manual"), json!({"ferry.dev/power": "on"}), running());
        assert!(matches!(
            power_plan(&on, Want::Start, false, "t1"),
            Plan::Nothing(_)
        ));
    }

    #[test]
    fn spec_strategies_are_refused_without_force_spec() {
        for (strategy, want) in [
            (Some("Halted"), Want::Start),
            (None, Want::Stop),
            (Some("Always"), Want::Stop),
            (Some("RerunOnFailure"), Want::Stop),
        ] {
            let v = vm(strategy, json!({}), running());
            match power_plan(&v, want, false, "t1") {
                Plan::Refuse(why) => {
                    assert!(why.contains("runStrategy: Manual"), "{why}");
                    assert!(why.contains("--force-spec"), "{why}");
                    assert!(why.contains("reverted"), "{why}");
                }
                other => panic!("{strategy:?} {want:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn force_spec_patches_the_run_strategy() {
        let v = vm(Some("Always"), json!({}), running());
        assert_eq!(
            patch_of(power_plan(&v, Want::Stop, true, "t1")),
            json!({"spec": {"runStrategy": "Halted"}})
        );
        let v = vm(Some("Halted"), json!({}), stopped());
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, true, "t1")),
            json!({"spec": {"runStrategy": "Always"}})
        );
    }

    #[test]
    fn nothing_to_do_is_said_and_not_sent() {
        let v = vm(None, json!({}), running());
        assert!(matches!(
            power_plan(&v, Want::Start, false, "t"),
            Plan::Nothing(_)
        ));
        let v = vm(Some("Halted"), json!({}), stopped());
        assert!(matches!(
            power_plan(&v, Want::Stop, true, "t"),
            Plan::Nothing(_)
        ));
        let v = vm(Some("RerunOnFailure"), json!({}), running());
        assert!(matches!(
            power_plan(&v, Want::Start, false, "t"),
            Plan::Nothing(_)
        ));
    }

    #[test]
    fn rerun_on_failure_starts_again_with_a_restart_token() {
        let mut st = stopped();
        st["stoppedByGuest"] = json!(true);
        let v = vm(Some("RerunOnFailure"), json!({}), st);
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, false, "2026-01-10T08:00:00Z")),
            json!({"metadata": {"annotations": {"ferry.dev/restart": "2026-01-10T08:00:00Z"}}})
        );
    }

    #[test]
    fn restart_sets_a_new_token() {
        let v = vm(None, json!({"ferry.dev/restart": "old"}), running());
        assert_eq!(
            patch_of(restart_plan(&v, "new")),
            json!({"metadata": {"annotations": {"ferry.dev/restart": "new"}}})
        );
        // A running Manual VM without the power annotation would stay off after the stop.
        let v = vm(Some("Manual"), json!({}), running());
        assert_eq!(
            patch_of(restart_plan(&v, "new")),
            json!({"metadata": {"annotations": {"ferry.dev/restart": "new", "ferry.dev/power": "on"}}})
        );
        for v in [
            vm(Some("Halted"), json!({}), stopped()),
            vm(Some("Manual"), json!({"ferry.dev/power": "off"}), stopped()),
            vm(Some("Manual"), json!({}), stopped()),
        ] {
            assert!(matches!(restart_plan(&v, "new"), Plan::Refuse(_)));
        }
    }

    #[test]
    fn pause_and_unpause_use_the_annotation() {
        let v = vm(None, json!({}), running());
        assert_eq!(
            patch_of(pause_plan(&v)),
            json!({"metadata": {"annotations": {"ferry.dev/paused": "true"}}})
        );
        assert!(matches!(
            pause_plan(&vm(None, json!({}), stopped())),
            Plan::Refuse(_)
        ));
        let paused = vm(None, json!({"ferry.dev/paused": "true"}), running());
        assert!(matches!(pause_plan(&paused), Plan::Nothing(_)));
        assert_eq!(
            patch_of(unpause_plan(&paused)),
            json!({"metadata": {"annotations": {"ferry.dev/paused": null}}})
        );
        assert!(matches!(unpause_plan(&v), Plan::Nothing(_)));
    }
}

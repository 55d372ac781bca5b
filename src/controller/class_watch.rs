//! Which VirtualMachineClass watch events wake the VMs that name a class.

use crate::api::VirtualMachineClass;
use kube::ResourceExt;
use kube::runtime::watcher;
use std::collections::{HashMap, HashSet};

/// The VirtualMachineClasses last seen, to pass on only the class events that matter to VMs: a
/// new generation (spec change), a class seen for the first time, a deletion (also one that
/// happened while the watch was down, found when it lists again).
#[derive(Default)]
pub(crate) struct ClassChanges {
    seen: HashMap<String, VirtualMachineClass>,
    /// The classes a list under way has shown so far.
    listing: Option<HashSet<String>>,
}

impl ClassChanges {
    /// The classes `event` wakes VMs for (watch errors passed on).
    pub(crate) fn changed(
        &mut self,
        event: Result<watcher::Event<VirtualMachineClass>, watcher::Error>,
    ) -> Vec<Result<VirtualMachineClass, watcher::Error>> {
        match event {
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                let name = c.name_any();
                if let Some(listing) = self.listing.as_mut() {
                    listing.insert(name.clone());
                }
                let new = self.seen.get(&name).map(|o| o.metadata.generation)
                    != Some(c.metadata.generation);
                self.seen.insert(name, c.clone());
                if new { vec![Ok(c)] } else { Vec::new() }
            }
            Ok(watcher::Event::Delete(c)) => {
                self.seen.remove(&c.name_any());
                vec![Ok(c)]
            }
            Ok(watcher::Event::Init) => {
                self.listing = Some(Default::default());
                Vec::new()
            }
            Ok(watcher::Event::InitDone) => {
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<String> = self
                    .seen
                    .keys()
                    .filter(|n| !listed.contains(*n))
                    .cloned()
                    .collect();
                gone.iter()
                    .filter_map(|n| self.seen.remove(n))
                    .map(Ok)
                    .collect()
            }
            Err(e) => vec![Err(e)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn class(name: &str, generation: i64) -> VirtualMachineClass {
        let mut c: VirtualMachineClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineClass",
            "metadata": {"name": name},
            "spec": {"cpu": {"cores": 1}, "memory": "128Mi"},
        }))
        .expect("class");
        c.metadata.generation = Some(generation);
        c
    }

    fn names(out: Vec<Result<VirtualMachineClass, watcher::Error>>) -> Vec<String> {
        out.into_iter()
            .map(|r| r.expect("no error").name_any())
            .collect()
    }

    #[test]
    fn new_generations_and_deletions_wake_metadata_changes_do_not() {
        let mut w = ClassChanges::default();
        assert_eq!(names(w.changed(Ok(Event::Apply(class("a", 1))))), ["a"]);
        // Same generation (labels, annotations): nothing.
        assert!(names(w.changed(Ok(Event::Apply(class("a", 1))))).is_empty());
        assert_eq!(names(w.changed(Ok(Event::Apply(class("a", 2))))), ["a"]);
        assert_eq!(names(w.changed(Ok(Event::Delete(class("a", 2))))), ["a"]);
        // Created again under the same name, generation 1: a new class.
        assert_eq!(names(w.changed(Ok(Event::Apply(class("a", 1))))), ["a"]);
    }

    #[test]
    fn a_list_again_wakes_only_what_changed_or_went_while_the_watch_was_down() {
        let mut w = ClassChanges::default();
        for e in [
            Event::Init,
            Event::InitApply(class("a", 1)),
            Event::InitApply(class("b", 1)),
            Event::InitApply(class("c", 1)),
        ] {
            w.changed(Ok(e));
        }
        assert!(names(w.changed(Ok(Event::InitDone))).is_empty());
        // The watch lists again: a unchanged, b changed, c deleted meanwhile.
        let mut woken = Vec::new();
        for e in [
            Event::Init,
            Event::InitApply(class("a", 1)),
            Event::InitApply(class("b", 2)),
            Event::InitDone,
        ] {
            woken.extend(names(w.changed(Ok(e))));
        }
        assert_eq!(woken, ["b", "c"]);
    }
}

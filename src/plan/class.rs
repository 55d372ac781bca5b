//! A VM's size from its own spec or from the VirtualMachineClass it names.

use crate::api::VirtualMachineSpec;
use crate::api::virtual_machine::{CpuSpec, ResourcesStatus};
use crate::api::virtual_machine_class::VirtualMachineClassSpec;

/// vCPUs, CPU model and memory a VM is defined with.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// The class they come from, if any.
    pub class_name: Option<String>,
    /// vCPUs and CPU model.
    pub cpu: CpuSpec,
    /// Memory quantity.
    pub memory: String,
}

impl Resources {
    /// What status shows.
    pub fn status(&self) -> ResourcesStatus {
        ResourcesStatus {
            class_name: self.class_name.clone(),
            cpus: self.cpu.cores,
            cpu_model: self.cpu.model.clone(),
            memory: self.memory.clone(),
        }
    }
}

/// Why a VM's size cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassError {
    /// The named class does not exist.
    #[error("VirtualMachineClass {0:?} (spec.className) does not exist: create it or fix the spec")]
    NotFound(String),
    /// The spec sets neither a class nor both cpu and memory, or both.
    #[error("{0}")]
    Invalid(String),
}

/// Resolve the size. `class` is the object named by `spec.className` (`None` when there is no
/// such class, or no name).
pub fn resolve(
    spec: &VirtualMachineSpec,
    class: Option<&VirtualMachineClassSpec>,
) -> Result<Resources, ClassError> {
    match (&spec.class_name, &spec.cpu, &spec.memory) {
        (Some(name), None, None) => {
            let class = class.ok_or_else(|| ClassError::NotFound(name.clone()))?;
            Ok(Resources {
                class_name: Some(name.clone()),
                cpu: class.cpu.clone(),
                memory: class.memory.clone(),
            })
        }
        (Some(_), _, _) => Err(ClassError::Invalid(
            "spec.className and spec.cpu / spec.memory are both set: keep one".into(),
        )),
        (None, Some(cpu), Some(memory)) => Ok(Resources {
            class_name: None,
            cpu: cpu.clone(),
            memory: memory.clone(),
        }),
        (None, _, _) => Err(ClassError::Invalid(
            "set spec.className, or both spec.cpu and spec.memory".into(),
        )),
    }
}

/// The size of a VM that is placed on a host (its domain defined, running or not) whose class
/// is gone: the size the VM was last resolved to (`recorded`, from its status) when that came
/// from the same class, so that the VM stays managed (power, monitoring, HA restarts) with the
/// size its domain has. `None` when nothing recorded serves: the VM waits for the class.
pub fn recorded_for_missing_class(
    spec: &VirtualMachineSpec,
    recorded: Option<&ResourcesStatus>,
) -> Option<Resources> {
    let name = spec.class_name.as_ref()?;
    let r = recorded.filter(|r| r.class_name.as_ref() == Some(name))?;
    (spec.cpu.is_none() && spec.memory.is_none()).then(|| Resources {
        class_name: Some(name.clone()),
        cpu: CpuSpec {
            cores: r.cpus,
            model: r.cpu_model.clone(),
        },
        memory: r.memory.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(class: Option<&str>, cpu: Option<i32>, memory: Option<&str>) -> VirtualMachineSpec {
        serde_json::from_value(serde_json::json!({
            "hostPool": "p",
            "className": class,
            "cpu": cpu.map(|c| serde_json::json!({"cores": c})),
            "memory": memory,
        }))
        .expect("spec")
    }

    fn small() -> VirtualMachineClassSpec {
        VirtualMachineClassSpec {
            cpu: CpuSpec {
                cores: 2,
                model: Some("Skylake-Server".into()),
            },
            memory: "4Gi".into(),
            description: None,
        }
    }

    /// Spec, class, and (vCPUs, memory, class name) or a piece of the error.
    type Case<'a> = (
        VirtualMachineSpec,
        Option<&'a VirtualMachineClassSpec>,
        Result<(i32, &'a str, Option<&'a str>), &'a str>,
    );

    #[test]
    fn resolution_table() {
        let class = small();
        let cases: Vec<Case> = vec![
            (
                spec(Some("small"), None, None),
                Some(&class),
                Ok((2, "4Gi", Some("small"))),
            ),
            (
                spec(None, Some(1), Some("512Mi")),
                None,
                Ok((1, "512Mi", None)),
            ),
            (
                spec(None, Some(1), Some("512Mi")),
                Some(&class),
                Ok((1, "512Mi", None)),
            ),
            (spec(Some("small"), None, None), None, Err("does not exist")),
            (
                spec(Some("small"), Some(1), None),
                Some(&class),
                Err("both set"),
            ),
            (
                spec(None, Some(1), None),
                None,
                Err("set spec.className, or both"),
            ),
            (
                spec(None, None, None),
                None,
                Err("set spec.className, or both"),
            ),
        ];
        for (s, c, want) in cases {
            let got = resolve(&s, c);
            match (got, want) {
                (Ok(r), Ok((cpus, mem, class_name))) => {
                    assert_eq!(r.cpu.cores, cpus);
                    assert_eq!(r.memory, mem);
                    assert_eq!(r.class_name.as_deref(), class_name);
                }
                (Err(e), Err(m)) => assert!(e.to_string().contains(m), "{e} vs {m}"),
                (got, want) => panic!("{s:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn status_shows_the_class_values() {
        let r = resolve(&spec(Some("small"), None, None), Some(&small())).expect("resolved");
        assert_eq!(
            r.status(),
            ResourcesStatus {
                class_name: Some("small".into()),
                cpus: 2,
                cpu_model: Some("Skylake-Server".into()),
                memory: "4Gi".into(),
            }
        );
    }

    #[test]
    fn a_placed_vm_keeps_the_size_of_its_deleted_class() {
        let recorded = Resources {
            class_name: Some("small".into()),
            cpu: small().cpu,
            memory: "4Gi".into(),
        };
        let from = |spec: &VirtualMachineSpec, r: &Resources| {
            recorded_for_missing_class(spec, Some(&r.status()))
        };
        assert_eq!(
            from(&spec(Some("small"), None, None), &recorded),
            Some(recorded.clone())
        );
        // Another class now named, nothing recorded, or a size in the spec: no fallback.
        assert_eq!(from(&spec(Some("large"), None, None), &recorded), None);
        assert_eq!(
            recorded_for_missing_class(&spec(Some("small"), None, None), None),
            None
        );
        assert_eq!(from(&spec(Some("small"), Some(1), None), &recorded), None);
        let own = Resources {
            class_name: None,
            ..recorded.clone()
        };
        assert_eq!(from(&spec(Some("small"), None, None), &own), None);
    }
}

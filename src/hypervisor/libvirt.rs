//! [`Hypervisor`](super::Hypervisor) over the `virt` crate.

//! Paths on the hosts (and on the controller) that ferry hands to libvirt and QEMU: which ones
//! are well formed, which directories a HostPool may declare, and whether a file lies inside a
//! declared directory.
//!
//! ferry does not resolve paths on the hosts, so it reasons about them as text: a path must be
//! absolute and already normalized (no `.` or `..` segments, no `//`, no trailing `/`), and a
//! file counts as inside a directory only when the directory's segments are a proper prefix of
//! its own. Symbolic links are the hosts' business; what this check can rule out is a directory
//! that *is* a system directory under another name, so both names of the usual merged-`/usr`
//! and `/var/run` links are protected, and a file ferry or QEMU creates for a tenant (a disk
//! volume, a console log) can never be a boot file because the directories for the three
//! purposes may not overlap.

/// System directories no HostPool directory may be, contain or lie inside (the API's list, which
/// the CRD's CEL rules use too).
pub use crate::api::schema::PROTECTED_DIRECTORIES as PROTECTED;

/// The segments of `path` if it is absolute and normalized, or what is wrong with it.
pub fn segments(path: &str) -> Result<Vec<&str>, String> {
    if path.chars().any(|c| c.is_control()) {
        return Err(format!("{path:?} contains control characters"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?} is not an absolute path"));
    };
    if rest.is_empty() {
        return Err("\"/\" is the whole file system, not a directory of its own".into());
    }
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "{path:?} has an empty segment (// or a trailing /): write it normalized"
        ));
    }
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(format!(
            "{path:?} has a . or .. segment: write it without them"
        ));
    }
    Ok(segs)
}

/// Whether `path` lies strictly inside `dir` (both as [`segments`]).
pub fn inside(path: &[&str], dir: &[&str]) -> bool {
    path.len() > dir.len() && path[..dir.len()] == *dir
}

/// Whether one of `a` and `b` is, or lies inside, the other.
pub fn overlap(a: &[&str], b: &[&str]) -> bool {
    a == b || inside(a, b) || inside(b, a)
}

/// Check a directory a HostPool declares in `field`: absolute, normalized, and clear of
/// [`PROTECTED`].
pub fn check_directory(field: &str, dir: &str) -> Result<(), String> {
    let segs = segments(dir).map_err(|e| format!("{field}: {e}"))?;
    for p in PROTECTED {
        let protected = segments(p).unwrap_or_default();
        if overlap(&segs, &protected) {
            let how = if segs == protected {
                "is"
            } else if inside(&segs, &protected) {
                "lies inside"
            } else {
                "contains"
            };
            return Err(format!(
                "{field} {dir} {how} the system directory {p}: use a directory of its own, such as /var/lib/ferry/..."
            ));
        }
    }
    Ok(())
}

/// Check that the file `path` (named by `field`) lies inside one of `dirs`; `what` names the
/// directories in the message (e.g. `HostPool lab spec.boot.directories`).
pub fn check_file_within(
    field: &str,
    path: &str,
    dirs: &[String],
    what: &str,
) -> Result<(), String> {
    let segs = segments(path).map_err(|e| format!("{field}: {e}"))?;
    let allowed = dirs
        .iter()
        .any(|d| segments(d).is_ok_and(|d| inside(&segs, &d)));
    if allowed {
        Ok(())
    } else if dirs.is_empty() {
        Err(format!(
            "{field} {path}: {what} is empty, so no file may be used; a platform admin must list the directory holding it"
        ))
    } else {
        Err(format!(
            "{field} {path} is outside {what} ({}): use a file in one of them, or have a platform admin add its directory",
            dirs.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalized() {
        let cases: &[(&str, Result<Vec<&str>, &str>)] = &[
            ("/srv/kernels", Ok(vec!["srv", "kernels"])),
            ("/a", Ok(vec!["a"])),
            ("/", Err("whole file system")),
            ("", Err("not an absolute path")),
            ("srv/kernels", Err("not an absolute path")),
            ("./srv", Err("not an absolute path")),
            ("/srv//kernels", Err("empty segment")),
            ("/srv/kernels/", Err("empty segment")),
            ("/srv/../etc", Err(". or .. segment")),
            ("/srv/./kernels", Err(". or .. segment")),
            ("/srv/kernels/..", Err(". or .. segment")),
            ("/srv/ker\nnels", Err("control characters")),
            // Dots inside a name are just a name.
            ("/srv/..kernels/a.b", Ok(vec!["srv", "..kernels", "a.b"])),
        ];
        for (path, want) in cases {
            match (want, segments(path)) {
                (Ok(w), Ok(got)) => assert_eq!(&got, w, "{path:?}"),
                (Err(needle), Err(e)) => assert!(e.contains(needle), "{path:?}: {e}"),
                (w, got) => panic!("{path:?}: want {w:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn inside_and_overlap_compare_whole_segments() {
        let s = |p: &'static str| segments(p).expect("path");
        assert!(inside(&s("/srv/k/vmlinuz"), &s("/srv/k")));
        assert!(!inside(&s("/srv/k"), &s("/srv/k")));
        assert!(!inside(&s("/srv/kernels2/x"), &s("/srv/kernels")));
        assert!(!inside(&s("/srv"), &s("/srv/k")));
        assert!(overlap(&s("/srv/k"), &s("/srv/k")));
        assert!(overlap(&s("/srv"), &s("/srv/k")));
        assert!(overlap(&s("/srv/k/x"), &s("/srv/k")));
        assert!(!overlap(&s("/srv/pool"), &s("/srv/boot")));
        assert!(!overlap(&s("/srv/boot2"), &s("/srv/boot")));
    }

    #[test]
    fn declared_directories_stay_clear_of_system_directories() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/var/lib/ferry/pool", None),
            ("/var/lib/libvirt/images", None),
            ("/var/log/libvirt/qemu", None),
            ("/srv/nfs/vms", None),
            ("/tmp/ferry-lab-1/shared/boot", None),
            ("/etc", Some("is the system directory /etc")),
            ("/etc/ferry", Some("lies inside the system directory /etc")),
            (
                "/var",
                Some("contains the system directory /var/lib/containerd"),
            ),
            (
                "/var/lib",
                Some("contains the system directory /var/lib/containerd"),
            ),
            (
                "/var/lib/libvirt",
                Some("contains the system directory /var/lib/libvirt/qemu"),
            ),
            ("/var/lib/libvirt/qemu/nvram", Some("lies inside")),
            (
                "/var/lib/kubelet/pods",
                Some("lies inside the system directory /var/lib/kubelet"),
            ),
            (
                "/var/run/libvirt",
                Some("lies inside the system directory /var/run"),
            ),
            (
                "/run/libvirt",
                Some("lies inside the system directory /run"),
            ),
            (
                "/usr/share/ferry",
                Some("lies inside the system directory /usr"),
            ),
            ("/lib64", Some("is the system directory /lib64")),
            ("/boot", Some("is the system directory /boot")),
            (
                "/root/images",
                Some("lies inside the system directory /root"),
            ),
            ("/proc/self", Some("lies inside the system directory /proc")),
            ("/", Some("whole file system")),
            ("/srv/../etc", Some(". or .. segment")),
            ("relative", Some("not an absolute path")),
        ];
        for (dir, want) in cases {
            match (want, check_directory("spec.storage.path", dir)) {
                (None, Ok(())) => {}
                (Some(needle), Err(e)) => {
                    assert!(e.contains(needle), "{dir}: {e}");
                    assert!(e.starts_with("spec.storage.path"), "{e}");
                }
                (w, got) => panic!("{dir}: want {w:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn files_must_lie_inside_a_declared_directory() {
        let dirs = vec!["/srv/kernels".to_string(), "/srv/initrds".to_string()];
        let what = "HostPool lab spec.boot.directories";
        let ok = |p: &str| check_file_within("spec.boot.kernel", p, &dirs, what);
        assert_eq!(ok("/srv/kernels/vmlinuz"), Ok(()));
        assert_eq!(ok("/srv/initrds/deep/initrd.img"), Ok(()));
        for (path, needle) in [
            (
                "/etc/shadow",
                "is outside HostPool lab spec.boot.directories (/srv/kernels, /srv/initrds)",
            ),
            ("/srv/kernels", "is outside"),
            ("/srv/kernels2/vmlinuz", "is outside"),
            ("/srv/kernels/../../etc/shadow", ". or .. segment"),
            ("/srv/kernels//vmlinuz", "empty segment"),
            ("vmlinuz", "not an absolute path"),
        ] {
            let e = ok(path).unwrap_err();
            assert!(e.contains(needle), "{path}: {e}");
        }
        let e = check_file_within("spec.boot.initrd", "/srv/kernels/i", &[], what).unwrap_err();
        assert!(e.contains("is empty"), "{e}");
    }
}

//! `import-ova`: one pass over an OVA (a file, or a download) for its SHA-256, its OVF
//! descriptor and its manifest, with every file the manifest lists checked against it.

use ferry::cloud_init::hex;
use ferry::plan::tar_member::MemberWalk;
use ring::digest;
use std::collections::BTreeMap;

/// Largest OVF descriptor or manifest read.
const MAX_TEXT: usize = 16 << 20;

/// What one pass over an OVA found.
#[derive(Debug)]
pub struct Archive {
    /// SHA-256 of the whole archive (what the controller checks the download against).
    pub sha256: String,
    /// Name and text of the OVF descriptor.
    pub ovf_name: String,
    pub ovf: String,
    /// Name and text of the manifest, if the archive has one.
    pub manifest: Option<(String, String)>,
    /// SHA-256, SHA-1 and SHA-512 of each file, by name.
    digests: BTreeMap<String, [String; 3]>,
}

/// The OVA's bytes as they come, walked and hashed.
pub struct Reader {
    whole: digest::Context,
    walk: MemberWalk,
    texts: BTreeMap<String, Vec<u8>>,
    hashes: BTreeMap<String, [digest::Context; 3]>,
}

fn text_file(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".ovf") || lower.ends_with(".mf")
}

impl Default for Reader {
    fn default() -> Self {
        Reader {
            whole: digest::Context::new(&digest::SHA256),
            walk: MemberWalk::every_file(),
            texts: BTreeMap::new(),
            hashes: BTreeMap::new(),
        }
    }
}

impl Reader {
    /// The next bytes of the archive.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.whole.update(chunk);
        let (texts, hashes) = (&mut self.texts, &mut self.hashes);
        let mut too_big = None;
        self.walk
            .feed_each(chunk, &mut |name, bytes| {
                let h = hashes.entry(name.to_string()).or_insert_with(|| {
                    [
                        digest::Context::new(&digest::SHA256),
                        digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY),
                        digest::Context::new(&digest::SHA512),
                    ]
                });
                for c in h.iter_mut() {
                    c.update(bytes);
                }
                if text_file(name) {
                    let t = texts.entry(name.to_string()).or_default();
                    if t.len() + bytes.len() > MAX_TEXT {
                        too_big = Some(name.to_string());
                    } else {
                        t.extend_from_slice(bytes);
                    }
                }
            })
            .map_err(|why| format!("the OVA {why}"))?;
        match too_big {
            Some(name) => Err(format!(
                "{name} in the OVA is larger than {MAX_TEXT} bytes: not an OVF descriptor or manifest ferry reads"
            )),
            None => Ok(()),
        }
    }

    /// The archive ended: what it holds, its manifest checked.
    pub fn finish(self) -> Result<Archive, String> {
        self.walk.finish().map_err(|why| format!("the OVA {why}"))?;
        let files = self.walk.files();
        let top = |suffix: &str| -> Vec<String> {
            files
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| !n.contains('/') && n.to_ascii_lowercase().ends_with(suffix))
                .collect()
        };
        let ovf_name = match top(".ovf").as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(format!(
                    "the archive holds no OVF descriptor (*.ovf): it is not an OVA (it holds {})",
                    files
                        .iter()
                        .map(|(n, _)| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            many => {
                return Err(format!(
                    "the archive holds {} OVF descriptors ({}): import-ova reads OVAs with one",
                    many.len(),
                    many.join(", ")
                ));
            }
        };
        let text = |name: &str| -> Result<String, String> {
            String::from_utf8(self.texts.get(name).cloned().unwrap_or_default())
                .map_err(|_| format!("{name} in the OVA is not UTF-8 text"))
        };
        let ovf = text(&ovf_name)?;
        let manifest = match top(".mf").as_slice() {
            [] => None,
            [one] => Some((one.clone(), text(one)?)),
            many => {
                return Err(format!(
                    "the archive holds {} manifests ({}): import-ova reads OVAs with one at most",
                    many.len(),
                    many.join(", ")
                ));
            }
        };
        let mut digests: BTreeMap<String, [String; 3]> = self
            .hashes
            .into_iter()
            .map(|(n, [a, b, c])| {
                (
                    n,
                    [
                        hex(a.finish().as_ref()),
                        hex(b.finish().as_ref()),
                        hex(c.finish().as_ref()),
                    ],
                )
            })
            .collect();
        // Empty files were never handed out: their digests are those of nothing.
        for (name, _) in files {
            digests.entry(name.clone()).or_insert_with(|| {
                [
                    hex(digest::digest(&digest::SHA256, b"").as_ref()),
                    hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, b"").as_ref()),
                    hex(digest::digest(&digest::SHA512, b"").as_ref()),
                ]
            });
        }
        Ok(Archive {
            sha256: hex(self.whole.finish().as_ref()),
            ovf_name,
            ovf,
            manifest,
            digests,
        })
    }
}

impl Archive {
    /// Check every file the manifest lists (`SHA256(name)= hex`, also SHA1 and SHA512) against
    /// the archive: the files it checked, or what does not match.
    pub fn check_manifest(&self) -> Result<Vec<String>, String> {
        let Some((mf_name, mf)) = &self.manifest else {
            return Ok(Vec::new());
        };
        let mut checked = Vec::new();
        for line in mf.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let bad = || format!("{mf_name}: cannot read the line {line:?}");
            let (algo, rest) = line.split_once('(').ok_or_else(bad)?;
            let (name, sum) = rest.rsplit_once(")=").ok_or_else(bad)?;
            let (name, sum) = (name.trim(), sum.trim().to_ascii_lowercase());
            let which = match algo.trim().to_ascii_uppercase().as_str() {
                "SHA256" => 0,
                "SHA1" => 1,
                "SHA512" => 2,
                other => {
                    return Err(format!(
                        "{mf_name} lists {name} with a {other} digest, which import-ova does not check"
                    ));
                }
            };
            let norm = name.trim_start_matches("./");
            let got = self
                .digests
                .get(norm)
                .ok_or_else(|| format!("{mf_name} lists {name:?}, which the OVA does not hold"))?;
            if got[which] != sum {
                return Err(format!(
                    "{name} in the OVA does not match its manifest {mf_name}: {} is {}, the manifest says {sum}",
                    algo.trim(),
                    got[which]
                ));
            }
            checked.push(norm.to_string());
        }
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive made with the system's `tar` from `files`.
    fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut names = Vec::new();
        for (name, data) in files {
            std::fs::write(dir.path().join(name), data).expect("write");
            names.push(*name);
        }
        let out = std::process::Command::new("tar")
            .arg("--format=ustar")
            .arg("-cf")
            .arg("-")
            .args(&names)
            .current_dir(dir.path())
            .output()
            .expect("tar");
        assert!(out.status.success());
        out.stdout
    }

    fn read(bytes: &[u8], piece: usize) -> Result<Archive, String> {
        let mut r = Reader::default();
        for c in bytes.chunks(piece) {
            r.feed(c)?;
        }
        r.finish()
    }

    fn sha256(b: &[u8]) -> String {
        hex(digest::digest(&digest::SHA256, b).as_ref())
    }

    #[test]
    fn reads_the_descriptor_and_checks_the_manifest() {
        let disk = vec![7u8; 5000];
        let ovf = b"<Envelope/>";
        let mf = format!(
            "SHA256(vm.ovf)= {}\nSHA1(vm-disk1.vmdk)= {}\n",
            sha256(ovf),
            hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &disk).as_ref())
        );
        let ova = tar(&[
            ("vm.ovf", ovf),
            ("vm-disk1.vmdk", &disk),
            ("vm.mf", mf.as_bytes()),
        ]);
        for piece in [1000, 512, ova.len()] {
            let a = read(&ova, piece).expect("reads");
            assert_eq!(a.sha256, sha256(&ova));
            assert_eq!(
                (a.ovf_name.as_str(), a.ovf.as_str()),
                ("vm.ovf", "<Envelope/>")
            );
            assert_eq!(
                a.check_manifest().expect("matches"),
                ["vm.ovf", "vm-disk1.vmdk"]
            );
        }
        let mf = format!("SHA256(vm-disk1.vmdk)= {}\n", sha256(b"other"));
        let ova = tar(&[
            ("vm.ovf", ovf),
            ("vm-disk1.vmdk", &disk),
            ("vm.mf", mf.as_bytes()),
        ]);
        let e = read(&ova, 4096)
            .expect("reads")
            .check_manifest()
            .expect_err("mismatch");
        assert!(e.contains("does not match its manifest vm.mf"), "{e}");
        let ova = tar(&[("vm.ovf", ovf), ("vm.mf", b"SHA256(gone.vmdk)= 00\n")]);
        let e = read(&ova, 4096)
            .expect("reads")
            .check_manifest()
            .expect_err("missing");
        assert!(e.contains("does not hold"), "{e}");
    }

    #[test]
    fn an_archive_without_one_descriptor_is_no_ova() {
        let e = read(&tar(&[("disk.vmdk", b"x")]), 512).expect_err("no ovf");
        assert!(e.contains("no OVF descriptor"), "{e}");
        let e = read(&tar(&[("a.ovf", b"x"), ("b.ovf", b"y")]), 512).expect_err("two");
        assert!(e.contains("2 OVF descriptors"), "{e}");
        let e = read(&[1u8; 2048], 512).expect_err("not tar");
        assert!(e.starts_with("the OVA has a damaged header"), "{e}");
    }
}

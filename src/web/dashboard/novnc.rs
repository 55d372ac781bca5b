//! noVNC 1.7.0 (npm `@novnc/novnc`, MPL-2.0; pako, MIT), vendored unmodified in
//! `assets/vendor/novnc-1.7.0/` and embedded: the files the dashboard serves under
//! `/dashboard/assets/novnc/`, by path.

/// (path, contents) of every served file.
pub const FILES: &[(&str, &str)] = &[
    ("AUTHORS", include_str!("assets/vendor/novnc-1.7.0/AUTHORS")),
    (
        "LICENSE.MPL-2.0",
        include_str!("assets/vendor/novnc-1.7.0/LICENSE.MPL-2.0"),
    ),
    (
        "LICENSE.txt",
        include_str!("assets/vendor/novnc-1.7.0/LICENSE.txt"),
    ),
    (
        "core/base64.js",
        include_str!("assets/vendor/novnc-1.7.0/core/base64.js"),
    ),
    (
        "core/crypto/aes.js",
        include_str!("assets/vendor/novnc-1.7.0/core/crypto/aes.js"),
    ),
    (
        "core/crypto/bigint.js",
        include_str!("assets/vendor/novnc-1.7.0/core/crypto/bigint.js"),
    ),
    (
        "core/crypto/crypto.js",
        include_str!("assets/vendor/novnc-1.7.0/core/crypto/crypto.js"),
    ),
    (
        "core/crypto/des.js",
        include_str!("assets/vendor/novnc-1.7.0/core/crypto/des.js"),
    ),
    (
        "core/crypto/dh.js",
        include_str!("assets/vendor/novnc-1.7.0/core/crypto/dh.js"),
    ),
    (
        "core/crypto/md5.js",
        include_str!("assets/vendor/novnc-1.7.0/core/crypto/md5.js"),
    ),
    (
        "core/crypto/rsa.js",
        include_str!("assets/vendor/novnc-1.7.0/core/crypto/rsa.js"),
    ),
    (
        "core/decoders/copyrect.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/copyrect.js"),
    ),
    (
        "core/decoders/h264.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/h264.js"),
    ),
    (
        "core/decoders/hextile.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/hextile.js"),
    ),
    (
        "core/decoders/jpeg.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/jpeg.js"),
    ),
    (
        "core/decoders/raw.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/raw.js"),
    ),
    (
        "core/decoders/rre.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/rre.js"),
    ),
    (
        "core/decoders/tight.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/tight.js"),
    ),
    (
        "core/decoders/tightpng.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/tightpng.js"),
    ),
    (
        "core/decoders/zlib.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/zlib.js"),
    ),
    (
        "core/decoders/zrle.js",
        include_str!("assets/vendor/novnc-1.7.0/core/decoders/zrle.js"),
    ),
    (
        "core/deflator.js",
        include_str!("assets/vendor/novnc-1.7.0/core/deflator.js"),
    ),
    (
        "core/display.js",
        include_str!("assets/vendor/novnc-1.7.0/core/display.js"),
    ),
    (
        "core/encodings.js",
        include_str!("assets/vendor/novnc-1.7.0/core/encodings.js"),
    ),
    (
        "core/inflator.js",
        include_str!("assets/vendor/novnc-1.7.0/core/inflator.js"),
    ),
    (
        "core/input/domkeytable.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/domkeytable.js"),
    ),
    (
        "core/input/fixedkeys.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/fixedkeys.js"),
    ),
    (
        "core/input/gesturehandler.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/gesturehandler.js"),
    ),
    (
        "core/input/keyboard.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/keyboard.js"),
    ),
    (
        "core/input/keysym.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/keysym.js"),
    ),
    (
        "core/input/keysymdef.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/keysymdef.js"),
    ),
    (
        "core/input/util.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/util.js"),
    ),
    (
        "core/input/vkeys.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/vkeys.js"),
    ),
    (
        "core/input/xtscancodes.js",
        include_str!("assets/vendor/novnc-1.7.0/core/input/xtscancodes.js"),
    ),
    (
        "core/ra2.js",
        include_str!("assets/vendor/novnc-1.7.0/core/ra2.js"),
    ),
    (
        "core/rfb.js",
        include_str!("assets/vendor/novnc-1.7.0/core/rfb.js"),
    ),
    (
        "core/util/browser.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/browser.js"),
    ),
    (
        "core/util/cursor.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/cursor.js"),
    ),
    (
        "core/util/element.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/element.js"),
    ),
    (
        "core/util/events.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/events.js"),
    ),
    (
        "core/util/eventtarget.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/eventtarget.js"),
    ),
    (
        "core/util/int.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/int.js"),
    ),
    (
        "core/util/logging.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/logging.js"),
    ),
    (
        "core/util/strings.js",
        include_str!("assets/vendor/novnc-1.7.0/core/util/strings.js"),
    ),
    (
        "core/websock.js",
        include_str!("assets/vendor/novnc-1.7.0/core/websock.js"),
    ),
    (
        "vendor/pako/LICENSE",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/LICENSE"),
    ),
    (
        "vendor/pako/lib/utils/common.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/utils/common.js"),
    ),
    (
        "vendor/pako/lib/zlib/adler32.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/adler32.js"),
    ),
    (
        "vendor/pako/lib/zlib/constants.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/constants.js"),
    ),
    (
        "vendor/pako/lib/zlib/crc32.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/crc32.js"),
    ),
    (
        "vendor/pako/lib/zlib/deflate.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/deflate.js"),
    ),
    (
        "vendor/pako/lib/zlib/gzheader.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/gzheader.js"),
    ),
    (
        "vendor/pako/lib/zlib/inffast.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/inffast.js"),
    ),
    (
        "vendor/pako/lib/zlib/inflate.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/inflate.js"),
    ),
    (
        "vendor/pako/lib/zlib/inftrees.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/inftrees.js"),
    ),
    (
        "vendor/pako/lib/zlib/messages.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/messages.js"),
    ),
    (
        "vendor/pako/lib/zlib/trees.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/trees.js"),
    ),
    (
        "vendor/pako/lib/zlib/zstream.js",
        include_str!("assets/vendor/novnc-1.7.0/vendor/pako/lib/zlib/zstream.js"),
    ),
];

/// The file at `path`, with its content type.
pub fn file(path: &str) -> Option<(&'static str, &'static str)> {
    let body = FILES.iter().find(|(p, _)| *p == path)?.1;
    let kind = if path.ends_with(".js") {
        "text/javascript; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    Some((kind, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in the vendored directory is listed (none forgotten after an update), and
    /// every import of a listed module names a listed file.
    #[test]
    fn every_vendored_file_is_served_and_every_import_resolves() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/web/dashboard/assets/vendor/novnc-1.7.0");
        let mut on_disk = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("vendored noVNC") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "js") {
                    let rel = p.strip_prefix(&root).expect("under root");
                    on_disk.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        for f in &on_disk {
            assert!(file(f).is_some(), "{f} is vendored but not served");
        }
        for (path, body) in FILES.iter().filter(|(p, _)| p.ends_with(".js")) {
            let dir = std::path::Path::new(path)
                .parent()
                .unwrap_or(std::path::Path::new(""));
            for line in body
                .lines()
                .filter(|l| l.trim_start().starts_with("import "))
            {
                let Some(spec) = line.split(['\'', '"']).nth(1) else {
                    continue;
                };
                let mut parts: Vec<&str> = dir
                    .to_str()
                    .unwrap_or("")
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    file(&target).is_some(),
                    "{path} imports {spec} ({target}), not served"
                );
            }
        }
        assert!(file("core/rfb.js").is_some());
        assert!(file("LICENSE.txt").is_some());
    }
}

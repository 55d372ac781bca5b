"""The two ways to build the controller image agree: the Dockerfile (with a container engine) and
scripts/image.sh (without one) install the same Debian packages and set the same user, entry
point, command, port and version label; the Dockerfile's context lets through what Cargo.toml
needs. (e2e/image.sh builds and runs the image; scripts/image.sh builds from exactly that context.)
"""

from __future__ import annotations

import json
import re
import shlex

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
SCRIPT = (ROOT / "scripts" / "image.sh").read_text()


def runtime_stage() -> str:
    return DOCKERFILE.split("\nFROM ")[-1]


def cargo_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)


def test_same_packages() -> None:
    apt = re.search(r"apt-get install -y --no-install-recommends ([^\\\n]+)", runtime_stage())
    assert apt
    mm = re.search(r"--include=(\S+)", SCRIPT)
    assert mm
    assert sorted(apt.group(1).split()) == sorted(mm.group(1).split(","))


def test_same_user_entrypoint_command_and_port() -> None:
    stage = runtime_stage()
    user = re.search(r"^USER (\S+)", stage, re.M).group(1)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", stage, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (.+)$", stage, re.M).group(1))
    port = re.search(r"^EXPOSE (\d+)", stage, re.M).group(1)
    words = shlex.split(SCRIPT.split("umoci config", 1)[1].split("umoci gc", 1)[0].replace("\\\n", " "))
    def values(flag: str) -> list[str]:
        return [words[i + 1] for i, w in enumerate(words) if w == flag]
    assert values("--config.user") == [user]
    assert values("--config.entrypoint") == entrypoint
    assert values("--config.cmd") == cmd
    assert values("--config.exposedports") == [f"{port}/tcp"]
    assert values("--config.env") == ["HOME=/tmp"] and "ENV HOME=/tmp" in stage
    # Both give uid 65532 a passwd entry.
    for text in (stage, SCRIPT):
        assert "ferry:x:65532:65532:ferry:/tmp:/usr/sbin/nologin" in text


def test_versions_and_labels() -> None:
    stage = runtime_stage()
    assert f'org.opencontainers.image.version="{cargo_version()}"' in stage
    for label in ("title", "licenses", "revision"):
        assert f"org.opencontainers.image.{label}=" in stage
        assert f"org.opencontainers.image.{label}=" in SCRIPT


def test_the_context_holds_what_cargo_toml_names() -> None:
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert lines[0] == "*"
    allowed = {l[1:].rstrip("/") for l in lines[1:]}
    import tomllib
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = {"Cargo.toml", "Cargo.lock", "src"}
    # cargo needs the binaries it builds, a build script, and every target whose path it must
    # infer (a [[bench]] without `path` fails the whole manifest when benches/NAME.rs is missing);
    # targets with an explicit path that is missing (the e2e [[test]]) do not stop a build.
    needed |= {b["path"].split("/")[0] for b in manifest.get("bin", []) if "path" in b}
    for kind, folder in (("bench", "benches"), ("test", "tests"), ("example", "examples")):
        if any("path" not in t for t in manifest.get(kind, [])):
            needed.add(folder)
    if manifest["package"].get("build") or (ROOT / "build.rs").exists():
        needed.add("build.rs")
    assert needed <= allowed, needed - allowed
    build = DOCKERFILE.split("\nFROM ")[1]
    copied = {src.rstrip("/") for line in build.splitlines() if line.startswith("COPY ")
              for src in line.split()[1:-1]}
    assert copied == allowed

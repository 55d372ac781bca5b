"""Every condition reason ferry can set has a row here, with the health Argo CD shows for an
object that carries it; a reason that appears in src/ without a row fails the test.

The reasons are read from the source: every CamelCase string literal outside tests in src/ (the
plugin in src/bin/ excepted) is either a condition reason with a row in REASONS or named in
NOT_CONDITION_REASONS with what it is. A new literal therefore fails here until it is
classified, and a row whose reason the source no longer sets fails too.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import pytest

from conftest import ROOT, cr_problems
from test_argocd_health import HEALTH, health


class Row(NamedTuple):
    kind: str
    condition: str
    status: str
    reason: str
    phase: str | None
    expect: str
    strategy: str = "Always"
    placed: bool = True


def vm_rows() -> list[Row]:
    ready = [
        ("True", "Running", "Running", "Healthy"),
        ("False", "Starting", "Starting", "Progressing"),
        ("False", "Stopping", "Stopping", "Progressing"),
        ("False", "Provisioning", "Provisioning", "Progressing"),
        ("False", "ImportingImage", "Provisioning", "Progressing"),
        ("False", "NoHostAvailable", "Pending", "Progressing"),
        ("False", "Stopped", "Stopped", "Progressing"),
        ("False", "NotRunning", "Terminating", "Progressing"),
        # Deleted for release, but the HostPool does not name the domain: a person decides.
        ("False", "ReleaseNotAllowed", "Terminating", "Degraded"),
        # A claim on a domain ferry refuses to take over: a person fixes the spec or the pool.
        ("False", "AdoptionBlocked", "Pending", "Degraded"),
        ("False", "HostFailingOver", "Stopped", "Progressing"),
        # VM monitoring waits for the storm guard to end: ferry starts it then.
        ("False", "StormGuardHolds", "Stopped", "Progressing"),
        ("False", "ClassUnavailable", "Pending", "Progressing"),
        ("False", "CloudInitUnavailable", "Pending", "Progressing"),
        ("False", "StoragePoolUnavailable", "Pending", "Progressing"),
        ("False", "SeedUploadFailed", "Pending", "Progressing"),
        ("False", "DiskCreateFailed", "Pending", "Progressing"),
        ("False", "StatusWriteFailed", "Pending", "Progressing"),
        ("False", "HostUnreachable", "Pending", "Progressing"),
        ("False", "DefineFailed", "Provisioning", "Progressing"),
        # Look before you start: waits that end by themselves.
        ("False", "OtherHostUnreachable", "Pending", "Progressing"),
        # Placed on a host in Standby that power management powers on for it.
        ("False", "HostStandby", "Pending", "Progressing"),
        ("False", "ActionWithheld", "Pending", "Progressing"),
        # A person must act: Degraded whatever the phase.
        ("False", "HostPoolNotFound", "Pending", "Degraded"),
        ("False", "ClassNotFound", "Pending", "Degraded"),
        ("False", "ImageNotFound", "Pending", "Degraded"),
        ("False", "VolumeNotFound", "Pending", "Degraded"),
        ("False", "CloudInitSecretNotFound", "Pending", "Degraded"),
        ("False", "CloudInitInvalid", "Pending", "Degraded"),
        ("False", "ChecksumMismatch", "Pending", "Degraded"),
        ("False", "ImportFailed", "Pending", "Degraded"),
        ("False", "DiskLocked", "Pending", "Degraded"),
        ("False", "InvalidSpec", "Pending", "Degraded"),
        ("False", "InvalidSpec", "Failed", "Degraded"),
        ("False", "RestartLimitReached", "Stopped", "Degraded"),
        ("False", "HostMisconfigured", "Pending", "Degraded"),
        ("False", "CloneSourceNotFound", "Pending", "Degraded"),
        ("False", "CloneSourceElsewhere", "Pending", "Degraded"),
        ("False", "CloneSourceRunning", "Pending", "Degraded"),
        ("False", "DuplicateMAC", "Pending", "Degraded"),
        ("False", "HostPoolRefused", "Pending", "Degraded"),
        ("False", "BootFileNotAllowed", "Pending", "Degraded"),
        ("False", "BootFileNotAllowed", "Running", "Degraded"),
        ("False", "DiskNotAllowed", "Pending", "Degraded"),
        ("False", "ImageRefused", "Pending", "Degraded"),
        ("False", "ImportRefused", "Pending", "Degraded"),
        ("False", "ArchiveMemberRefused", "Pending", "Degraded"),
        ("False", "DiskMissing", "Failed", "Degraded"),
        ("False", "DomainConflict", "Failed", "Degraded"),
        # Failures of a placed VM.
        ("False", "Paused", "Running", "Degraded"),
        ("False", "HostUnreachable", "Unknown", "Degraded"),
        ("False", "HostGone", "Unknown", "Degraded"),
        ("False", "RunningTwice", "Unknown", "Degraded"),
        ("False", "StatusReadFailed", "Unknown", "Degraded"),
        # Found running elsewhere: the one reconcile that adopts it reports Ready=False.
        ("False", "Adopted", "Running", "Degraded"),
        ("False", "MigrationUnconfirmed", "Unknown", "Degraded"),
        ("False", "FailoverRefused", "Unknown", "Degraded"),
        ("False", "DefineFailed", "Failed", "Degraded"),
        ("False", "StartFailed", "Failed", "Degraded"),
        ("False", "StopFailed", "Failed", "Degraded"),
        ("False", "HostOperationFailed", "Failed", "Degraded"),
        ("False", "PauseFailed", "Failed", "Degraded"),
        ("False", "ResumeFailed", "Failed", "Degraded"),
        # Paused through ferry.dev/paused: suspended by design.
        ("False", "PausedOnRequest", "Running", "Suspended"),
    ]
    rows = [Row("VirtualMachine", "Ready", s, r, p, e) for s, r, p, e in ready]
    rows += [
        Row("VirtualMachine", "Ready", "False", "Stopped", "Stopped", "Healthy", strategy="Halted"),
        Row("VirtualMachine", "Ready", "False", "Stopped", "Stopped", "Healthy", strategy="Manual"),
        # Stopped, and assigned to a host in Standby: nothing is missing.
        Row("VirtualMachine", "Ready", "False", "HostStandby", "Stopped", "Healthy", strategy="Halted"),
        Row("VirtualMachine", "Ready", "False", "NoHostAvailable", "Pending", "Healthy", strategy="Halted", placed=False),
        # Conditions other than Ready do not change the health of a running VM.
        Row("VirtualMachine", "Scheduled", "True", "Placed", "Running", "Healthy"),
        Row("VirtualMachine", "Scheduled", "True", "Migrated", "Running", "Healthy"),
        Row("VirtualMachine", "Scheduled", "True", "Adopted", "Running", "Healthy"),
        Row("VirtualMachine", "Scheduled", "True", "TookOver", "Running", "Healthy"),
        Row("VirtualMachine", "Migrating", "True", "Migrating", "Migrating", "Progressing"),
        Row("VirtualMachine", "Migrating", "False", "NotMigrating", "Running", "Healthy"),
        Row("VirtualMachine", "Migrating", "False", "Migrated", "Running", "Healthy"),
        Row("VirtualMachine", "Migrating", "False", "MigrationFailed", "Running", "Healthy"),
        Row("VirtualMachine", "RestartRequired", "True", "SpecChanged", "Running", "Healthy"),
        Row("VirtualMachine", "RestartRequired", "False", "UpToDate", "Running", "Healthy"),
    ]
    return rows


REASONS: list[Row] = [
    *vm_rows(),
    Row("HostPool", "Ready", "True", "AllHostsReady", None, "Healthy"),
    Row("HostPool", "Ready", "True", "SomeHostsNotReady", None, "Healthy"),
    Row("HostPool", "Ready", "False", "NoHostReady", None, "Degraded"),
    Row("HostPool", "Ready", "False", "NoHostsSelected", None, "Degraded"),
    Row("HostPool", "Ready", "False", "InvalidSelector", None, "Degraded"),
    Row("HostPool", "Ready", "False", "TransportNotAllowed", None, "Degraded"),
    Row("HostPool", "Ready", "False", "URIParameterNotAllowed", None, "Degraded"),
    Row("HostPool", "Ready", "False", "PathNotAllowed", None, "Degraded"),
    Row("HostPool", "Ready", "False", "ImageNotAllowed", None, "Degraded"),
    Row("HostPool", "Ready", "False", "ImportSettingsInvalid", None, "Degraded"),
    Row("HostPool", "Degraded", "False", "AllHostsHealthy", None, "Healthy"),
    Row("HostPool", "Degraded", "True", "HostsUnhealthy", None, "Healthy"),
    Row("HostPool", "Evacuating", "False", "NoEvacuation", None, "Healthy"),
    Row("HostPool", "Evacuating", "False", "Evacuated", None, "Healthy"),
    Row("HostPool", "Evacuating", "True", "Evacuating", None, "Progressing"),
    Row("HostPool", "Evacuating", "True", "Blocked", None, "Degraded"),
    Row("HAPolicy", "Ready", "True", "Watching", None, "Healthy"),
    Row("HAPolicy", "Ready", "False", "HostPoolNotFound", None, "Degraded"),
    Row("HAPolicy", "Ready", "False", "InvalidSelector", None, "Degraded"),
    Row("HAPolicy", "StormGuard", "False", "Clear", None, "Healthy"),
    Row("HAPolicy", "StormGuard", "True", "TooManyHostsFailing", None, "Degraded"),
    Row("HAPolicy", "AwaitingConfirmation", "False", "NothingToConfirm", None, "Healthy"),
    Row("HAPolicy", "AwaitingConfirmation", "True", "NoFencing", None, "Degraded"),
    Row("HAPolicy", "FenceFailed", "False", "NoFailedFence", None, "Healthy"),
    Row("HAPolicy", "FenceFailed", "True", "FenceFailed", None, "Degraded"),
    Row("HAPolicy", "FailoverCapacity", "True", "Sufficient", None, "Healthy"),
    Row("HAPolicy", "FailoverCapacity", "False", "Insufficient", None, "Degraded"),
    Row("VirtualMachineMigration", "Complete", "True", "Succeeded", "Succeeded", "Healthy"),
    Row("VirtualMachineMigration", "Complete", "False", "Failed", "Failed", "Degraded"),
    Row("VirtualMachineMigration", "Complete", "False", "Cancelled", "Cancelled", "Degraded"),
]

# CamelCase literals in src/ that are not condition reasons, by what they are.
NOT_CONDITION_REASONS = {
    # condition types
    "Ready", "Scheduled", "Migrating", "RestartRequired", "Degraded", "Evacuating", "Complete",
    "StormGuard", "AwaitingConfirmation", "FenceFailed", "FailoverCapacity",
    # Event reasons and actions (kubectl get events)
    "Resolve", "Started", "ShuttingDown", "ForcedOff", "Defined", "Deleted", "DiskCreated", "SeedCreated",
    "SeedRemoved", "ImageRemoved", "ImportStarted", "LeftBehind", "RestartedAfterCrash",
    "OrphanDomains", "HostReady", "HostCordoned", "EvacuationBlocked", "EvacuationCancelled",
    "StaleDomainRemoved", "Fenced", "Confirmed", "Copied", "Start", "Stop", "Define", "Delete",
    "ConsoleOpened", "ConsoleClosed", "Console", "Normal", "Released", "Balancing", "Balance",
    "Update", "Provision", "Import", "Schedule", "Migrate", "Cleanup", "Reconcile", "Probe",
    "Evacuate", "Adopt", "Fence", "Failover", "Recover", "ShutOff", "Resumed", "Pause", "Check",
    "Draining", "PoweringOff", "PoweredOff", "Waking", "PoweringOn", "PoweredOn",
    "StandbyCancelled", "StandbyAborted", "WakeFailed", "Power",
    # never reported: a reconcile that read a stale copy of the VM stops without writing
    "StaleCopy",
    # API values: kinds, status types, phases and states, printer columns, field names
    "VirtualMachine", "VirtualMachineClass", "VirtualMachineMigration", "HostPool", "HAPolicy",
    "VirtualMachineStatus", "VirtualMachineMigrationStatus", "HostPoolStatus", "HAPolicyStatus",
    "CloudInitSpec", "Pending", "Unknown", "Terminating", "Cordoned", "Unreachable",
    "Misconfigured", "Phase", "Host", "IP", "Age", "VM", "Source", "Target", "Strategy", "Hosts",
    "Selected", "Protected", "Capacity", "Action", "CPUs", "Memory", "Model", "Shared", "HA",
    "Standby",
    "IPMI", "InternalIP", "ExternalIP", "Hostname", "True", "False",
    # discovery document of the aggregated API
    "APIResourceList",
    # run strategies named in the plugin's and the dashboard's messages; an HTTP header value
    "Always", "Halted", "DENY",
    # a vendored file's name (noVNC's AUTHORS)
    "AUTHORS",
    # quantity units
    "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB",
    # words of the libvirt, Redfish, IPMI and ISO 9660 edges
    "ForceOff", "On", "Off", "Other", "PowerState", "ResetType", "UUID", "RAKP", "Credentials", "ConnectOptions",
    "HostConnections", "LibvirtHost", "Hypervisor", "Seed", "SeedData", "FERRY", "HOSTNAME",
    # words of disk image formats (VMDK magics and descriptor extent lines)
    "KDMV", "COWD", "RW", "RDONLY", "NOACCESS", "SPARSE",
}

LITERAL = re.compile(r'"([A-Z][A-Za-z]+)"')


def source_literals() -> dict[str, set[str]]:
    """CamelCase string literals in src/ outside tests, with the files that hold them."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "src").rglob("*.rs")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "bin" or path.name == "tests.rs":
            continue
        text = path.read_text().split("#[cfg(test)]", 1)[0]
        text = re.sub(r"//.*", "", text)
        for m in LITERAL.finditer(text):
            found.setdefault(m.group(1), set()).add(str(rel))
    return found


def type_names() -> set[str]:
    """Names of the types defined in src/: literals naming them are Debug output
    (`debug_struct("FakeHost")`), not condition reasons."""
    names: set[str] = set()
    for path in (ROOT / "src").rglob("*.rs"):
        names |= set(re.findall(r"\b(?:struct|enum|trait|type)\s+([A-Z][A-Za-z0-9]*)", path.read_text()))
    return names


def test_every_reason_in_the_source_has_a_row() -> None:
    rows = {r.reason for r in REASONS}
    types = type_names()
    unclassified = {
        lit: sorted(files) for lit, files in source_literals().items()
        if lit not in rows and lit not in NOT_CONDITION_REASONS and lit not in types
    }
    assert unclassified == {}, (
        "new CamelCase literals in src/: a condition reason needs a row in REASONS (and the Lua "
        "check an answer for it); anything else goes into NOT_CONDITION_REASONS")


def test_every_row_and_exclusion_is_still_in_the_source() -> None:
    literals = source_literals()
    assert sorted({r.reason for r in REASONS} - literals.keys()) == []
    assert sorted(NOT_CONDITION_REASONS - literals.keys()) == []


def condition(type_: str, status: str, reason: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason,
            "message": f"{type_} {status} because {reason}", "observedGeneration": 2,
            "lastTransitionTime": "2026-01-10T08:00:00Z"}


def obj_for(row: Row) -> tuple[dict[str, Any], str]:
    """An object carrying the row's condition, and the message Argo CD should show."""
    meta = {"name": "x", "namespace": "vms", "generation": 2}
    cond = condition(row.condition, row.status, row.reason)
    if row.kind == "VirtualMachine":
        status: dict[str, Any] = {"phase": row.phase, "observedGeneration": 2}
        if row.placed:
            status["host"] = "hv-1"
        conds = [cond] if row.condition == "Ready" else [condition("Ready", "True", "Running"), cond]
        status["conditions"] = conds
        obj = {"spec": {"hostPool": "rack1", "runStrategy": row.strategy, "cpu": {"cores": 1},
                        "memory": "1Gi"}, "status": status}
        return obj, conds[0]["message"]
    if row.kind == "HostPool":
        conds = [cond] if row.condition == "Ready" else [condition("Ready", "True", "AllHostsReady"), cond]
        obj = {"spec": {"nodeSelector": {"matchLabels": {"ferry.dev/hypervisor": "true"}},
                        "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
                        "storage": {"pool": "ferry"}},
               "status": {"observedGeneration": 2, "conditions": conds}}
        shown = cond if row.condition == "Ready" or row.expect != "Healthy" else conds[0]
        return obj, shown["message"]
    if row.kind == "HAPolicy":
        conds = [cond] if row.condition == "Ready" else [condition("Ready", "True", "Watching"), cond]
        obj = {"spec": {"hostPools": ["rack1"]},
               "status": {"observedGeneration": 2, "conditions": conds}}
        if row.expect == "Healthy":
            return obj, conds[0]["message"]
        label = row.reason if row.condition == "Ready" else row.condition
        return obj, f"{label}: {cond['message']}"
    if row.kind == "VirtualMachineMigration":
        obj = {"spec": {"vmName": "web-1"},
               "status": {"phase": row.phase, "source": "hv-1", "target": "hv-2",
                          "message": "what happened", "conditions": [cond]}}
        return obj, {"Succeeded": "Moved from hv-1 to hv-2",
                     "Failed": "Failed from hv-1 to hv-2: what happened",
                     "Cancelled": "Cancelled from hv-1 to hv-2: what happened"}[row.phase]
    raise AssertionError(row.kind)


@pytest.mark.parametrize("row", REASONS, ids=lambda r: f"{r.kind}:{r.condition}={r.status}:{r.reason}:{r.phase}:{r.strategy}")
def test_reason_row(row: Row) -> None:
    body, message = obj_for(row)
    obj = {"apiVersion": "ferry.dev/v1alpha1", "kind": row.kind,
           "metadata": {"name": "x", "namespace": "vms", "generation": 2}, **body}
    assert cr_problems(obj) == []
    script = (HEALTH / f"ferry.dev_{row.kind}" / "health.lua").read_text()
    assert health(script, obj) == {"status": row.expect, "message": message}


def test_the_waits_for_a_person_match_the_rows_and_the_readme() -> None:
    script = (HEALTH / "ferry.dev_VirtualMachine" / "health.lua").read_text()
    table = re.search(r"local needs_person = \{(.*?)\n\}", script, re.S)
    assert table
    in_lua = set(re.findall(r"(\w+) = true", table.group(1)))
    # Degraded although the phase is a transition (Pending, Terminating) or a stop ferry would undo
    # (Stopped).
    in_rows = {r.reason for r in REASONS if r.kind == "VirtualMachine" and r.condition == "Ready"
               and r.expect == "Degraded" and r.phase in ("Pending", "Stopped", "Terminating")}
    assert in_lua == in_rows
    readme = (ROOT / "deploy" / "argocd" / "README.md").read_text()
    assert sorted(r for r in in_lua if f"`{r}`" not in readme) == []



def test_every_vm_reason_is_explained_in_the_docs() -> None:
    page = (ROOT / "docs" / "virtual-machines.md").read_text()
    reasons = {r.reason for r in REASONS if r.kind == "VirtualMachine"}
    assert sorted(r for r in reasons if f"`{r}`" not in page) == []

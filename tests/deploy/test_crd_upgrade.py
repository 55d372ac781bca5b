"""The documented CRD upgrade path, against a real API server (or, where none can run, the
in-repo stand-in, which implements server-side apply field ownership and conflicts): `helm
install` puts the chart's CRDs in place (owned by the field manager `helm`) and `helm upgrade`
never touches them again; a newer chart's CRDs must be applied with `kubectl apply --server-side
--force-conflicts`, and without `--force-conflicts` the apply fails on Helm's ownership instead
of silently half-applying.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import CHART


@pytest.mark.parametrize("install", ["create", "apply"], ids=["helm3-create", "helm4-server-side-apply"])
def test_crds_upgrade_with_server_side_apply(api_server: dict[str, Any], install: str) -> None:
    k, tmp = api_server["k"], api_server["tmp"]
    # What `helm install` does with crds/: Helm 3 creates them, Helm 4 applies them server-side.
    if install == "create":
        k("create", "--field-manager=helm", "-f", str(CHART / "crds"))
    else:
        k("apply", "--server-side", "--field-manager=helm", "-f", str(CHART / "crds"))

    # A newer chart whose HostPool CRD documents a field differently.
    newer = tmp / "newer-crds"
    shutil.copytree(CHART / "crds", newer)
    hp = newer / "hostpools.ferry.dev.yaml"
    old_text = "Nodes that belong to the pool."
    assert old_text in hp.read_text()
    hp.write_text(hp.read_text().replace(old_text, "Nodes that belong to the pool (upgraded)."))

    plain = k("apply", "--server-side", "-f", str(newer), ok=False)
    assert plain.returncode != 0 and "conflict" in plain.stderr.lower(), plain.stderr
    k("apply", "--server-side", "--force-conflicts", "-f", str(newer))
    crd = json.loads(k("get", "crd", "hostpools.ferry.dev", "-o", "json").stdout)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "(upgraded)" in spec["properties"]["nodeSelector"]["description"]
    # From now on kubectl owns the fields: later upgrades apply without forcing.
    k("apply", "--server-side", "-f", str(newer))

"""kube-standin: an in-memory stand-in for the Kubernetes API server, for ferry's e2e tests.

Modules:

* :mod:`standin.errors`    -- ``Status`` objects and the API error type.
* :mod:`standin.selection` -- label/field selectors and the small JSONPath used by printer columns.
* :mod:`standin.patches`   -- JSON merge patch, strategic merge patch (subset), RFC 6902 JSON patch.
* :mod:`standin.ssa`       -- server-side apply: field sets, merge, ownership and conflicts.
* :mod:`standin.schema`    -- CRD ``openAPIV3Schema`` handling: validation, pruning, list-map checks,
  ``self == oldSelf`` transition rules.
* :mod:`standin.store`     -- resource types, objects, resourceVersion, generation, finalizers,
  watch fan-out and history.
* :mod:`standin.server`    -- the aiohttp application: routing, discovery, tables, watch streams, CLI.
"""

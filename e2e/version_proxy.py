"""A plain-HTTP proxy to a Kubernetes API server that reports another server version.

    python e2e/version_proxy.py KUBECONFIG GIT_VERSION PORT_FILE

Listens on 127.0.0.1 (a free port, written to PORT_FILE), forwards every request, watches
included, to the API server KUBECONFIG names with that kubeconfig's client certificate, and
answers GET /version with GIT_VERSION (e.g. v1.29.0) instead of the server's.

Why: the real API server the tests have here (../shared/kube) is Kubernetes v1.28.7 built with
the CEL environment of 1.29, so it accepts exactly the CRDs a 1.29 server accepts, but it says
v1.28.7, and Helm refuses to install a chart whose kubeVersion (>=1.29) that version does not
meet. e2e/quickstart.sh runs the README's `helm install` through this proxy; the controller
itself talks to the server directly.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
import tempfile

import yaml
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web
from aiohttp.client_exceptions import ClientConnectionResetError

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length"}


def upstream_of(kubeconfig: str) -> tuple[str, ssl.SSLContext]:
    kc = yaml.safe_load(open(kubeconfig))
    ctx_name = kc["current-context"]
    ctx = next(c["context"] for c in kc["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in kc["users"] if u["name"] == ctx["user"])
    tls = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    d = tempfile.mkdtemp(prefix="version-proxy-")
    cert, key = os.path.join(d, "client.crt"), os.path.join(d, "client.key")
    with open(cert, "wb") as f:
        f.write(base64.b64decode(user["client-certificate-data"]))
    with open(key, "wb") as f:
        f.write(base64.b64decode(user["client-key-data"]))
    tls.load_cert_chain(cert, key)
    os.unlink(cert)
    os.unlink(key)
    os.rmdir(d)
    return cluster["server"].rstrip("/"), tls


async def main() -> None:
    kubeconfig, git_version, port_file = sys.argv[1], sys.argv[2], sys.argv[3]
    server, tls = upstream_of(kubeconfig)
    session = ClientSession(connector=TCPConnector(ssl=tls), timeout=ClientTimeout(total=None),
                            auto_decompress=False)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with session.request(request.method, server + request.path_qs, headers=headers,
                                   data=body if body else None, allow_redirects=False) as up:
            if request.path == "/version" and up.status == 200:
                version = json.loads(await up.read())
                version["gitVersion"] = git_version
                major, minor = git_version.lstrip("v").split(".")[:2]
                version["major"], version["minor"] = major, minor
                return web.json_response(version)
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP})
            await resp.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except (ConnectionResetError, ClientConnectionResetError):
                pass  # the client went away (a watch it stopped)
            return resp

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.replace(port_file + ".tmp", port_file)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""A logging reverse proxy in front of an API server (the stand-in, or a real one over HTTPS), so
that the requests of one client (the ferry controller) can be told apart from the test's own
kubectl calls.

Usage: audit_proxy.py UPSTREAM_URL LOG_PATH READY_PATH [CA_FILE]
Listens on plain HTTP on loopback and forwards every request (its Authorization header too) to
UPSTREAM_URL, verifying an HTTPS upstream against CA_FILE. Writes one JSON line per request to
LOG_PATH ({"method", "path", "query", "status"}), the proxy's URL to READY_PATH once listening,
and streams responses (watches included) through unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import sys

from aiohttp import ClientSession, ClientTimeout, web

HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


async def main(upstream: str, log_path: str, ready_path: str, ca_file: str | None = None) -> None:
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the proxy
    session = ClientSession(timeout=ClientTimeout(total=None), auto_decompress=False)
    tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with session.request(request.method, upstream + request.path_qs, data=body,
                                   headers=headers, allow_redirects=False, ssl=tls) as up:
            log.write(json.dumps({"method": request.method, "path": request.path,
                                  "query": dict(request.query), "status": up.status}) + "\n")
            resp = web.StreamResponse(
                status=up.status,
                headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
            await resp.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except (ConnectionResetError, ConnectionError):
                pass
            return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, shutdown_timeout=1.0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the port picked for 0
    tmp = f"{ready_path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"http://127.0.0.1:{port}\n")
    os.replace(tmp, ready_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

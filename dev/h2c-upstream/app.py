"""An ASGI upstream for the h2c-smuggling test, served by Hypercorn.

`/admin/...` answers a secret that keygate must never let an anonymous
client read; every other path echoes what the upstream received (path,
HTTP version, headers) as JSON.
"""

import json

ADMIN_SECRET = b"ADMIN-SECRET-c0ffee"


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"].startswith("/admin"):
        body = ADMIN_SECRET
    else:
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        body = json.dumps(
            {"path": scope["path"], "http_version": scope["http_version"], "headers": headers}
        ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

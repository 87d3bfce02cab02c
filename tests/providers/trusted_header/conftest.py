"""A real nginx in front of the test server: basic auth, then Remote-User/Name/Groups set for the upstream."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# nginx connects to the test server from this address, the only one in http: trusted_proxies;
# test clients talking to the server directly come from 127.0.0.1.
PROXY_SOURCE = "127.0.0.2"

NGINX_CONF = """
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
daemon off;
master_process off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map $remote_user $sso_name {{ alice "Alice Liddell"; default ""; }}
    map $remote_user $sso_groups {{ alice "family,home-admins"; bob "family"; carol "guests"; default ""; }}
    server {{
        listen 127.0.0.1:{port};
        auth_basic "opp-auth test";
        auth_basic_user_file {tmp}/htpasswd;
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_bind {source};
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Remote-User $remote_user;
            proxy_set_header Remote-Name $sso_name;
            proxy_set_header Remote-Groups $sso_groups;
        }}
    }}
}}
"""

USERS = {"alice": "alice-pass", "bob": "bob-pass", "carol": "carol-pass", "dave": "dave-pass"}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Nginx:
    """A running nginx: its base URL and its error log."""

    base: str
    error_log: Path


@pytest.fixture
async def nginx(tmp_path: Path, require_binary: Callable[..., str]) -> AsyncIterator[Callable[[int], Nginx]]:
    """start(upstream_port) runs nginx in front of the server on a free loopback port; stopped after the test."""
    binary = require_binary("nginx", "nginx")
    htpasswd = require_binary("htpasswd", "apache2-utils")
    procs: list[subprocess.Popen[bytes]] = []

    def start(upstream: int) -> Nginx:
        root = tmp_path / "nginx"
        root.mkdir()
        for user, password in USERS.items():
            flags = "-bBc" if user == "alice" else "-bB"
            subprocess.run([htpasswd, flags, str(root / "htpasswd"), user, password], check=True, capture_output=True)
        port = free_port()
        (root / "nginx.conf").write_text(NGINX_CONF.format(tmp=root, port=port, upstream=upstream, source=PROXY_SOURCE))
        proc = subprocess.Popen(
            [binary, "-p", str(root), "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("nginx did not start listening")
        return Nginx(base=f"http://127.0.0.1:{port}", error_log=root / "error.log")

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
            except TimeoutError:
                proc.kill()

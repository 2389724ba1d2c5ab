"""``make cluster``: several API instances behind the shipped nginx configuration.

One embedded database, N hypercorn instances (each its own master with its
own workers, as N containers would be) and nginx in front, configured with
``deploy/nginx/http.conf`` and ``server.conf`` exactly as deployed: HTTPS
with HTTP/2 and plain HTTP, both proxying to every instance. nginx runs
unprivileged with everything it writes in the run folder; its TLS
certificate is self-signed, made on first use, and never committed (the run
folder is inside the git-ignored instance folder). Ctrl-C (or SIGTERM) stops
the proxy, then the instances, then the database.

The tests (``tests/cluster``) start the same ``Cluster`` on free ports.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from app.embedded_db import EmbeddedDatabase, free_port
from config import load_settings
from scripts.devserver import ROOT, ServerProcess, start_hypercorn, stop, wait_ready

NGINX_CONFIG_DIR = ROOT / "deploy" / "nginx"
START_SECONDS = 60.0
#: nginx's workers drop root to this user when the proxy is started as root.
UNPRIVILEGED_USER = "nobody"


def generate_certificate(directory: Path) -> Path:
    """A self-signed certificate for localhost and 127.0.0.1 in ``directory`` (kept if there).

    The key never leaves this machine's instance (or test) folder. Returns
    the certificate, which a client passes as its trusted CA.
    """
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "cert.pem", directory / "key.pem"
    if certificate.is_file() and key.is_file():
        return certificate
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "365",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(certificate),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return certificate


#: An instance that failed an attempt is skipped this long (nginx's passive health check), even
#: if it is back sooner: a rolling restart waits this long after an instance is ready before it
#: stops the next, or both may be skipped at once.
FAIL_TIMEOUT_SECONDS = 5


def upstream_server(port: int) -> str:
    """One instance in the upstream, with its passive health check."""
    return f"127.0.0.1:{port} max_fails=1 fail_timeout={FAIL_TIMEOUT_SECONDS}s"


def nginx_config(run_dir: Path, servers: list[str], http_port: int, https_port: int) -> str:
    """The main configuration around the shipped http.conf and server.conf."""
    upstream = "\n".join(f"        server {server};" for server in servers)
    # Started as root (CI, containers), nginx's master drops its workers to an
    # unprivileged user (and makes the temp folders theirs).
    user = ""
    if os.geteuid() == 0:
        group = grp.getgrgid(pwd.getpwnam(UNPRIVILEGED_USER).pw_gid).gr_name
        user = f"user {UNPRIVILEGED_USER} {group};\n"
    return f"""{user}worker_processes 1;
pid {run_dir}/nginx.pid;
error_log {run_dir}/nginx-error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    client_body_temp_path {run_dir}/temp/body;
    proxy_temp_path {run_dir}/temp/proxy;
    fastcgi_temp_path {run_dir}/temp/fastcgi;
    uwsgi_temp_path {run_dir}/temp/uwsgi;
    scgi_temp_path {run_dir}/temp/scgi;
    include {NGINX_CONFIG_DIR}/http.conf;
    access_log {run_dir}/nginx-access.log todo_api;
    upstream todo_api {{
{upstream}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl http2;
        include {NGINX_CONFIG_DIR}/server.conf;
    }}
}}
"""


@dataclass
class Proxy:
    """nginx with the shipped configuration, in front of ``servers``; files in ``run_dir``."""

    run_dir: Path
    servers: list[str]
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def certificate(self) -> Path:
        return self.run_dir / "tls" / "cert.pem"

    @property
    def access_log(self) -> Path:
        return self.run_dir / "nginx-access.log"

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o755)  # nginx's unprivileged workers reach their temp folders
        (self.run_dir / "temp").mkdir(exist_ok=True)
        generate_certificate(self.run_dir / "tls")
        config = self.run_dir / "nginx.conf"
        config.write_text(nginx_config(self.run_dir, self.servers, self.http_port, self.https_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.run_dir), "-c", str(config), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            process_group=0,  # Ctrl-C reaches the script, which stops the proxy first
        )
        wait_listening(self.https_port, self.process, "nginx")
        wait_listening(self.http_port, self.process, "nginx")

    def stop(self) -> None:
        """Fast shutdown: open event streams would hold a graceful one for minutes."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port}")


@dataclass
class Instance:
    port: int
    name: str
    process: ServerProcess | None = None
    starts: int = 0

    def next_log(self, run_dir: Path) -> Path:
        """A log file per start: readiness counts the "Running on" lines of this start."""
        self.starts += 1
        suffix = "" if self.starts == 1 else f"-{self.starts}"
        log = run_dir / f"{self.name}{suffix}.log"
        log.unlink(missing_ok=True)
        return log


@dataclass
class Cluster:
    """A database, API instances and nginx; start, stop or restart an instance, stop all."""

    env: Mapping[str, str]
    instances: list[Instance]
    proxy: Proxy
    workers: int = 2
    database: EmbeddedDatabase | None = None

    @property
    def run_dir(self) -> Path:
        return self.proxy.run_dir

    def start(self) -> None:
        """Start everything; on any failure stop what started and raise."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not self.env.get("MONGO_URI"):
                storage = str(load_settings(environ=dict(self.env))["EMBEDDED_DB_PATH"])
                self.database = EmbeddedDatabase(storage)
                self.env = {**self.env, "MONGO_URI": self.database.start()}
            for number in range(len(self.instances)):
                self.start_instance(number)
            for number in range(len(self.instances)):
                self.wait_instance(number)
            self.proxy.start()
        except BaseException:
            self.stop()
            raise

    def start_instance(self, number: int) -> None:
        instance = self.instances[number]
        instance.process = start_hypercorn(
            instance.port,
            dict(self.env),
            self.workers,
            instance.next_log(self.run_dir),
            own_process_group=True,
        )

    def wait_instance(self, number: int) -> None:
        instance = self.instances[number]
        assert instance.process is not None
        wait_ready(instance.port, instance.process, START_SECONDS, workers=self.workers)

    def stop_instance(self, number: int) -> str:
        """SIGTERM one instance and wait for it to exit; return its output."""
        process = self.instances[number].process
        assert process is not None
        return stop(process)

    def exited(self) -> list[str]:
        """The processes that ended on their own."""
        ended = [
            f"instance on port {instance.port}"
            for instance in self.instances
            if instance.process is not None and instance.process.poll() is not None
        ]
        if self.proxy.process is not None and self.proxy.process.poll() is not None:
            ended.append("nginx")
        return ended

    def stop(self) -> None:
        """The proxy first (no new requests), then every instance, then the database."""
        self.proxy.stop()
        for instance in self.instances:
            if instance.process is not None and instance.process.poll() is None:
                stop(instance.process)
        if self.database is not None:
            self.database.stop()


def new_cluster(
    run_dir: Path,
    env: Mapping[str, str],
    instances: int = 2,
    workers: int = 2,
    http_port: int | None = None,
    https_port: int | None = None,
    first_instance_port: int | None = None,
) -> Cluster:
    """A cluster on the given ports (free ones where None), not started yet."""
    ports = [
        first_instance_port + number if first_instance_port else free_port()
        for number in range(instances)
    ]
    return Cluster(
        env={
            # One proxy in front: the last X-Forwarded-For entry is the client
            # nginx saw, and only nginx (on the loopback) may set it.
            "TRUSTED_PROXY_COUNT": "1",
            "TRUSTED_PROXIES": "127.0.0.1/32",
            **env,
        },
        instances=[Instance(port, f"instance-{number + 1}") for number, port in enumerate(ports)],
        proxy=Proxy(
            run_dir,
            [upstream_server(port) for port in ports],
            http_port or free_port(),
            https_port or free_port(),
        ),
        workers=workers,
    )


@contextmanager
def running_cluster(run_dir: Path, env: Mapping[str, str], **options: int) -> Iterator[Cluster]:
    cluster = new_cluster(run_dir, env, **options)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="hypercorn workers per instance")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--https-port", type=int, default=8443)
    parser.add_argument("--first-instance-port", type=int, default=8001)
    parser.add_argument(
        "--run-dir", type=Path, default=ROOT / "instance" / "cluster", help="logs, nginx, TLS"
    )
    options = parser.parse_args(argv)
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    cluster = new_cluster(
        options.run_dir,
        dict(os.environ),
        instances=options.instances,
        workers=options.workers,
        http_port=options.http_port,
        https_port=options.https_port,
        first_instance_port=options.first_instance_port,
    )
    print(f"starting {options.instances} instances x {options.workers} workers ...", flush=True)
    cluster.start()
    try:
        ports = ", ".join(str(instance.port) for instance in cluster.instances)
        print(
            f"API through nginx: https://localhost:{cluster.proxy.https_port} (HTTP/2; "
            f"certificate {cluster.proxy.certificate}) and "
            f"http://127.0.0.1:{cluster.proxy.http_port}\n"
            f"instances on 127.0.0.1:{ports}; logs in {cluster.run_dir}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while not stopping.wait(0.5):
            if cluster.exited():
                print(f"stopping: {cluster.exited()} exited", file=sys.stderr)
                return 1
        return 0
    finally:
        print("stopping the proxy, the instances and the database ...", flush=True)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())

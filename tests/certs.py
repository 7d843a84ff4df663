"""Throw-away certificates for the TLS tests, made with the openssl command line tool."""

import pathlib
import shutil
import subprocess

import pytest


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory, san="DNS:localhost,IP:127.0.0.1"):
    """A CA (``ca.pem``), a server certificate for ``san`` (``server.crt``/``server.key``, and
    both in ``server-bundle.pem``) and a client certificate (``client.crt``/``client.key``),
    all signed by the CA. Returns ``directory`` as a Path."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    d = pathlib.Path(directory)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=tooz test CA", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=%s\nbasicConstraints=CA:FALSE\n" % san)
    for who in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", who + ".key", "-out", who + ".csr",
                 "-subj", "/CN=tooz test " + who, cwd=d)
        _openssl("x509", "-req", "-in", who + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", who + ".crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    (d / "server-bundle.pem").write_text((d / "server.key").read_text() + (d / "server.crt").read_text())
    return d

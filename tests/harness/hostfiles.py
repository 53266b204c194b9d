"""Operator host-file folders (vhost.d, htpasswd, client_ca, proxy.conf) in a temporary root, and the table of
what plain HTTP answers for a client-certificate host: shared by the pure and the `nginx -t` tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from companion.core import certificates, plan
from companion.core.plan import HttpAnswer
from companion.nginx.hostfiles import Dirs
from tests.harness.containers import app as c

HOST = "a.example.com"


def dirs_in(root: Path) -> Dirs:
    for name in ("vhost.d", "htpasswd", "client_ca"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return Dirs(str(root / "vhost.d"), str(root / "htpasswd"), str(root / "client_ca"), str(root / "proxy.conf"))


def desired_for(method: str, state: str, placeholder: certificates.CertFiles) -> plan.Desired:
    labels = {"VIRTUAL_HOST": HOST, "HTTPS_METHOD": method}
    if state != "unwanted":
        labels["LETSENCRYPT_HOST"] = HOST
    certs = {HOST: replace(placeholder, domains=(HOST,))} if state == "issued" else {}
    return plan.build([c("web", **labels)], certs, placeholder)


EXPECTED = {
    ("redirect", "issued"): (HttpAnswer.REDIRECT, ""),
    ("redirect", "missing"): (HttpAnswer.REFUSED, ""),
    ("redirect", "unwanted"): (HttpAnswer.REFUSED, "LETSENCRYPT_HOST"),
    ("noredirect", "issued"): (HttpAnswer.REDIRECT, "HTTPS_METHOD"),
    ("noredirect", "missing"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("noredirect", "unwanted"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("nohttp", "issued"): (None, ""),  # no HTTP server for the host at all: the catch-all answers 503
    ("nohttp", "missing"): (HttpAnswer.REFUSED, ""),
    ("nohttp", "unwanted"): (HttpAnswer.REFUSED, "LETSENCRYPT_HOST"),
    ("nohttps", "issued"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("nohttps", "missing"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("nohttps", "unwanted"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
}

"""Every variant of the proxy settings nginx-proxy users bring along, accepted by the real `nginx -t`. Parsing
and the rendered text are tests/unit/test_proxy_options.py.
"""

from __future__ import annotations

import pytest

from companion.settings.config import SslPolicy
from tests.harness.fleet import (
    fleet_certs,
    render_fleet,
)
from tests.harness.nginx import NginxLayout, make_layout

# -- the real nginx -t ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> NginxLayout:
    return make_layout(tmp_path_factory.mktemp("proxyopts") / "nginx")


@pytest.mark.parametrize("policy", list(SslPolicy))
@pytest.mark.parametrize(
    ("trust", "ipv6", "code", "external"),
    [(False, False, 301, 0), (True, True, 308, 8443), (True, False, 307, 0), (False, True, 302, 443)],
)
def test_nginx_accepts_every_variant(
    layout: NginxLayout, policy: SslPolicy, trust: bool, ipv6: bool, code: int, external: int
) -> None:
    real = layout.cert()
    options = layout.options(
        http_port=8080,
        https_port=8443,
        ssl_policy=policy,
        trust_downstream_proxy=trust,
        enable_ipv6=ipv6,
        non_get_redirect=code,
        external_https_port=external,
        external_http_port=external and 80,
    )
    _, files = render_fleet(options, certs=fleet_certs(real, real), placeholder=real)
    ok, output = layout.check(files)
    assert ok, output
    assert "[emerg]" not in output and "[warn]" not in output, output

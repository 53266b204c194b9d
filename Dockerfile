# The companion image: Debian's python3 with the package and certbot in a venv, run as `companion run`.
#
#   docker build -t companion:local .
#
# certbot's DNS plugins for DNS-01 (dns-rfc2136, dns-cloudflare, dns-route53, dns-digitalocean) are
# installed at certbot's own version; docs/dns-01.md shows how a derived image adds another.
#
# Two stages: the venv is built with pip in the first and copied into a clean runtime stage, so pip's
# cache, python3-venv and apt lists never reach the final image. No compiler is needed: every
# dependency ships a wheel. Nothing user-specific is baked in: configure with environment variables
# (see README.md) and mount the Docker socket, the certs dir and the ACME webroot.
FROM debian:bookworm-slim AS build
# The classic builder keeps this stage as an untagged image; the label lets a build script remove it.
LABEL io.companion.build-stage="true"

# A CA bundle already in the base image (e.g. with a TLS-intercepting proxy's CA) is kept for pip:
# installing python3 pulls in ca-certificates, which rewrites that file.
RUN set -eux; \
    if [ -s /etc/ssl/certs/ca-certificates.crt ]; then cp /etc/ssl/certs/ca-certificates.crt /build-ca.pem; fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/companion

COPY pyproject.toml /src/
# The dependencies (and the build backend) first, read from pyproject.toml alone: a change to the package's code reuses this layer
# (e2e/images/build.py keeps this stage tagged so the next build finds it).
RUN set -eux; \
    if [ -s /build-ca.pem ]; then export PIP_CERT=/build-ca.pem; fi; \
    /opt/companion/bin/python -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' \
        >/src/requirements.txt; \
    /opt/companion/bin/pip install --no-cache-dir --disable-pip-version-check -r /src/requirements.txt; \
    certbot_version="$(/opt/companion/bin/python -c 'import certbot; print(certbot.__version__)')"; \
    /opt/companion/bin/pip install --no-cache-dir --disable-pip-version-check \
        "certbot==$certbot_version" \
        "certbot-dns-rfc2136==$certbot_version" \
        "certbot-dns-cloudflare==$certbot_version" \
        "certbot-dns-route53==$certbot_version" \
        "certbot-dns-digitalocean==$certbot_version"

COPY companion /src/companion
# pyproject.toml names README.md as the long description; the image does not need its text.
RUN set -eux; \
    touch /src/README.md; \
    if [ -s /build-ca.pem ]; then export PIP_CERT=/build-ca.pem; fi; \
    /opt/companion/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation /src; \
    /opt/companion/bin/pip check; \
    /opt/companion/bin/pip uninstall -y --disable-pip-version-check pip setuptools; \
    /opt/companion/bin/companion --help >/dev/null; \
    /opt/companion/bin/python -c "import certbot.main"; \
    for plugin in dns-rfc2136 dns-cloudflare dns-route53 dns-digitalocean; do \
        /opt/companion/bin/python -c "import sys; from certbot.main import main; sys.exit(main())" \
            plugins --authenticators --config-dir /tmp/certbot --work-dir /tmp/certbot \
            --logs-dir /tmp/certbot 2>/dev/null | grep -q "^\* $plugin\$"; \
    done; \
    rm -rf /tmp/certbot

# Stages keep the label (so a default build's untagged agent stage is cleaned up); the final stage drops it.
FROM debian:bookworm-slim AS python
LABEL io.companion.build-stage="true"
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3; \
    rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log

# The Swarm agent image (`docker build --target agent -t companion-agent:local .`): Debian's nginx run
# by `companion agent` as its child, so the agent tests it with `nginx -t` and reloads it with SIGHUP
# without a Docker socket. Laid out like the official image: conf.d/*.conf only, logs to stdout/stderr.
# nginx is installed before the package is copied, so a code change does not reinstall it.
FROM python AS agent
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx; \
    rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
        /etc/nginx/sites-enabled /etc/nginx/sites-available /var/www/html; \
    rm -f /etc/nginx/conf.d/*.conf; \
    ln -sf /dev/stdout /var/log/nginx/access.log; \
    ln -sf /dev/stderr /var/log/nginx/error.log; \
    nginx -t
COPY --from=build /opt/companion /opt/companion
ENV PATH=/opt/companion/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The node's last good files and certificates (volumes, so they outlive the container), and its state.
VOLUME ["/etc/nginx/conf.d", "/etc/letsencrypt", "/var/lib/companion-agent"]
EXPOSE 80 443
ENTRYPOINT ["companion"]
CMD ["agent"]

FROM python
LABEL io.companion.build-stage="false"

COPY --from=build /opt/companion /opt/companion

ENV PATH=/opt/companion/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Shared with nginx at the same paths (the generated config names them): certificates and the webroot
# that answers /.well-known/acme-challenge/. The generated nginx config goes to /etc/nginx/conf.d,
# which the compose file mounts from a volume nginx shares.
VOLUME ["/etc/letsencrypt", "/var/www/letsencrypt"]
# The control socket (`companion renew`) is /run/companion/control.sock: in the container, in no volume.

# `companion check` fails when the loop has not finished a pass for two minutes (heartbeat file age).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["companion", "check"]

ENTRYPOINT ["companion"]
CMD ["run"]

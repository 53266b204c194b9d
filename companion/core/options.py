"""The companion's own settings, each declared once as pure data: its type, default, command-line flag,
environment name and help. settings/ builds Settings on these declarations and derives its flags,
loading, parsing and the docs' table from them; core/variables tells them apart from a container's
variables by their environment names."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from companion.core.trust import ImageTrust, OwnerRule
from companion.core.values import Challenge, RootAnswer

LETSENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# The types below name how settings/ parses a setting's text, so each gets its own name.
CaUrls = tuple[str, ...]  # ACME directory URLs, kept exactly as written (their case matters)
NotifyUrls = tuple[str, ...]  # Apprise URLs; they hold tokens and passwords, so never shown
Resolvers = tuple[str, ...]  # nginx `resolver` addresses: an IP, an IP:port or [IPv6]:port, normalised
HostName = str  # one host name, lower case and IDNA-encoded; "" for none
Profile = str  # an ACME profile name as the CA spells it; "" for the CA's default
EabKid = str  # an external account binding key id; "" for none
EabHmacKey = str  # an external account binding HMAC key (base64url); "" for none; never shown


class SslPolicy(StrEnum):
    """Mozilla's TLS configurations, by nginx-proxy's names for them."""

    MODERN = "Mozilla-Modern"  # TLS 1.3 only
    INTERMEDIATE = "Mozilla-Intermediate"  # TLS 1.2 and 1.3
    OLD = "Mozilla-Old"  # TLS 1.0 to 1.3, for clients that cannot do better


def option(default: Any, flag: str, env: str, text: str, *, secret: bool = False) -> Any:
    """One setting's declaration: a dataclass field whose metadata says how it is set and documented;
    a secret one is left out of the repr, so it never reaches a log."""
    return field(default=default, repr=not secret, metadata={"flag": flag, "env": env, "help": text})


@dataclass(frozen=True)
class Options:
    """Every setting of the companion, in the order of `--help` and the docs' table."""

    conf_dir: str = option("/etc/nginx/conf.d", "--conf-dir", "CONF_DIR", "where generated nginx files go")
    webroot: str = option(
        "/var/www/letsencrypt", "--webroot", "ACME_WEBROOT", "folder nginx serves /.well-known/acme-challenge/ from"
    )
    certs_dir: str = option(
        "/etc/letsencrypt", "--certs-dir", "CERTS_DIR", "certificate store (certbot's config dir layout)"
    )
    http_port: int = option(80, "--http-port", "HTTP_PORT", "port nginx listens on for HTTP")
    https_port: int = option(443, "--https-port", "HTTPS_PORT", "port nginx listens on for HTTPS")
    reload: str = option(
        "docker", "--reload", "NGINX_RELOAD", "'docker' to SIGHUP the nginx container(s), else a host command"
    )
    nginx_test: str = option(
        "docker", "--nginx-test", "NGINX_TEST", "'docker' to exec nginx -t in the nginx container, else a host command"
    )
    nginx_container: str = option("", "--nginx-container", "NGINX_PROXY_CONTAINER", "name or id of the nginx container")
    default_email: str = option(
        "", "--default-email", "DEFAULT_EMAIL", "ACME account email when a container names none"
    )
    acme_server: str = option(LETSENCRYPT_PRODUCTION, "--acme-server", "ACME_CA_URI", "ACME directory URL")
    acme_staging_server: str = option(
        LETSENCRYPT_STAGING,
        "--acme-staging-server",
        "ACME_STAGING_URI",
        "ACME directory a container's LETSENCRYPT_TEST/ACME_TEST=true selects",
    )
    allowed_acme_servers: CaUrls = option(
        (),
        "--allowed-acme-servers",
        "ACME_CA_URIS_ALLOWED",
        "comma list of further ACME directory URLs a container may name in ACME_CA_URI",
    )
    ca_bundle: str = option("", "--ca-bundle", "CA_BUNDLE", "CA file to trust the ACME server's TLS")
    key_type: str = option("ecdsa", "--key-type", "KEY_TYPE", "ecdsa or rsa")
    rsa_key_size: int = option(2048, "--rsa-key-size", "RSA_KEY_SIZE", "2048, 3072 or 4096")
    renew_before_days: float = option(
        0.0,
        "--renew-before",
        "RENEW_BEFORE_DAYS",
        "renew when fewer days are left (0: when a third of the lifetime is left)",
    )
    acme_retry_base: float = option(
        300.0, "--acme-retry-base", "ACME_RETRY_BASE", "seconds before the first retry of a failed order"
    )
    allowed_domains: tuple[str, ...] = option(
        (), "--allowed-domains", "ALLOWED_DOMAINS", "comma list of glob patterns names must match"
    )
    image_trust: ImageTrust = option(
        ImageTrust.ROUTING,
        "--trust-image-labels",
        "TRUST_IMAGE_LABELS",
        "what a container's image may set: 'routing' (only VIRTUAL_HOST[_MULTIPORTS]/PORT/PROTO/PATH/DEST), "
        "'all' or 'none'",
    )
    domain_owners: tuple[OwnerRule, ...] = option(
        (),
        "--domain-owners",
        "DOMAIN_OWNERS",
        "comma list of PATTERN=project:NAME or PATTERN=label:KEY=VALUE: only those containers may claim the names",
    )
    self_check: bool = option(
        True, "--self-check", "ACME_SELF_CHECK", "fetch a test token through nginx before an HTTP-01 order"
    )
    acme_challenge: Challenge = option(
        Challenge.HTTP01,
        "--acme-challenge",
        "ACME_CHALLENGE",
        "http-01, or dns-01 (needs --dns-plugin); a container's ACME_CHALLENGE overrides it",
    )
    acme_cert_profile: Profile = option(
        "",
        "--acme-cert-profile",
        "ACME_CERT_PROFILE",
        "ACME profile certificates are ordered under (classic, tlsserver, shortlived at Let's Encrypt; the CA's "
        "directory lists its own); a container's ACME_CERT_PROFILE overrides it; empty: the CA's default",
    )
    acme_eab_kid: EabKid = option(
        "",
        "--acme-eab-kid",
        "ACME_EAB_KID",
        "external account binding key id, for CAs that require one (ZeroSSL, Google); needs the HMAC key",
    )
    acme_eab_hmac_key: EabHmacKey = option(
        "",
        "--acme-eab-hmac-key",
        "ACME_EAB_HMAC_KEY",
        "the key id's HMAC key (base64url); prefer ACME_EAB_HMAC_KEY_FILE: never shown, logged or stored",
        secret=True,
    )
    acme_eab_hmac_key_file: str = option(
        "",
        "--acme-eab-hmac-key-file",
        "ACME_EAB_HMAC_KEY_FILE",
        "a file holding the HMAC key (a Docker secret), read at start instead of ACME_EAB_HMAC_KEY",
    )
    dns_plugin: str = option(
        "",
        "--dns-plugin",
        "ACME_DNS_PLUGIN",
        "certbot DNS plugin for DNS-01 and wildcard names: dns-rfc2136, dns-cloudflare, dns-route53, "
        "dns-digitalocean or one a derived image adds (see DNS-01)",
    )
    # never read here, only checked and passed on to certbot
    dns_credentials: str = option(
        "",
        "--dns-credentials",
        "ACME_DNS_CREDENTIALS",
        "the plugin's credentials file (a Docker secret; not readable by others); dns-route53 reads AWS_* instead",
    )
    dns_propagation_seconds: int = option(
        -1,
        "--dns-propagation",
        "ACME_DNS_PROPAGATION_SECONDS",
        "seconds the plugin waits for its TXT record to reach every DNS server before validation (-1: the "
        "plugin's default)",
    )
    default_host: HostName = option(
        "",
        "--default-host",
        "DEFAULT_HOST",
        "host whose site answers names no container claims (over HTTPS once it has a real certificate); else 503",
    )
    default_root: RootAnswer | None = option(
        RootAnswer(404),
        "--default-root",
        "DEFAULT_ROOT",
        "what `/` answers on a host whose containers claim only sub-paths: a status code, a redirect code and"
        " target (`301 $scheme://$host/app/`), or `none` for nginx's own root",
    )
    http_on_missing_cert: bool = option(
        True,
        "--enable-http-on-missing-cert",
        "ENABLE_HTTP_ON_MISSING_CERT",
        "serve an HTTPS_METHOD=redirect site over HTTP until its certificate exists; false: HTTP answers 503 "
        "until then (the ACME challenge still works)",
    )
    heartbeat_file: str = option(
        "/tmp/companion.heartbeat", "--heartbeat-file", "HEARTBEAT_FILE", "touched by every loop pass, read by 'check'"
    )
    log_level: str = option("INFO", "--log-level", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")
    # nginx-proxy trusts by default; here the proxy is the edge, so a client must not be able to forge
    # the X-Forwarded-Proto/Host/Port/Ssl that apps believe.
    trust_downstream_proxy: bool = option(
        False,
        "--trust-downstream-proxy",
        "TRUST_DOWNSTREAM_PROXY",
        "pass on incoming X-Forwarded-Proto/Host/Port/Ssl (only behind another proxy: clients could forge them)",
    )
    ssl_policy: SslPolicy = option(
        SslPolicy.INTERMEDIATE,
        "--ssl-policy",
        "SSL_POLICY",
        "Mozilla-Modern (TLS 1.3 only), Mozilla-Intermediate (TLS 1.2/1.3) or Mozilla-Old (TLS 1.0-1.3)",
    )
    enable_ipv6: bool = option(False, "--enable-ipv6", "ENABLE_IPV6", "listen on [::] too, with the same ports")
    external_http_port: int = option(
        0,
        "--external-http-port",
        "EXTERNAL_HTTP_PORT",
        "port clients reach HTTP on, sent as X-Forwarded-Port (0: HTTP_PORT)",
    )
    external_https_port: int = option(
        0,
        "--external-https-port",
        "EXTERNAL_HTTPS_PORT",
        "port clients reach HTTPS on (published 8443:443), carried by redirects and X-Forwarded-Port (0: HTTPS_PORT)",
    )
    non_get_redirect: int = option(
        301,
        "--non-get-redirect",
        "NON_GET_REDIRECT",
        "redirect code to HTTPS for methods other than GET and HEAD: 301, 302, 307 or 308 (307/308 keep the method)",
    )
    status_listen: str = option(
        "",
        "--status-listen",
        "STATUS_LISTEN",
        "HOST:PORT for the status page, /status.json, /metrics and /healthz (`0.0.0.0:8081` in the image); empty: off",
    )
    status_auth: str = option(
        "",
        "--status-auth",
        "STATUS_AUTH",
        "htpasswd file (bcrypt: htpasswd -B) whose users may read the status endpoint; /healthz stays open",
    )
    status_credentials: str = option(
        "",
        "--status-credentials",
        "STATUS_CREDENTIALS",
        "file holding `user:password` of a STATUS_AUTH user: `explain` and `certs` send it when they ask the service",
    )
    # In the companion's own container, never in a volume another container mounts (nginx mounts the certs).
    control_socket: str = option(
        "/run/companion/control.sock",
        "--control-socket",
        "CONTROL_SOCKET",
        "unix socket where the service takes `companion renew`'s orders (its folder is made 0700): keep it "
        "out of every volume another container mounts",
    )
    renew_limit_minutes: float = option(
        60.0,
        "--renew-limit-minutes",
        "RENEW_LIMIT_MINUTES",
        "`companion renew` (forced or not) may make the service order each certificate once in this many minutes",
    )
    renew_limit_per_hour: int = option(
        20, "--renew-limit-per-hour", "RENEW_LIMIT_PER_HOUR", "and this many orders in all in any hour"
    )
    notify_urls: NotifyUrls = option(
        (), "--notify", "NOTIFY_URLS", "comma list of Apprise URLs that get alerts (see Alerts)", secret=True
    )
    notify_expiry_days: float = option(
        14.0,
        "--notify-expiry-days",
        "NOTIFY_EXPIRY_DAYS",
        "alert once a day when a certificate in use has fewer days left (0: never)",
    )
    log_format: str = option(
        "text",
        "--log-format",
        "LOG_FORMAT",
        "text or json: the companion's own log (json: one object per line); anything else is nginx-proxy's "
        "meaning, nginx's access log format (written to ACCESS_LOG_PATH)",
    )
    log_format_escape: str = option(
        "default",
        "--log-format-escape",
        "LOG_FORMAT_ESCAPE",
        "escaping of variables in a custom LOG_FORMAT: default, json or none",
    )
    vhost_dir: str = option(
        "/etc/nginx/vhost.d",
        "--vhost-dir",
        "VHOST_DIR",
        "folder of per-host nginx files: `<host>` (else `default`) goes into the host's servers, "
        "`<host>_location` (else `default_location`) into its locations",
    )
    htpasswd_dir: str = option(
        "/etc/nginx/htpasswd",
        "--htpasswd-dir",
        "HTPASSWD_DIR",
        "folder of htpasswd files: `<host>` switches on basic auth for that host (the ACME challenge stays open)",
    )
    client_ca_dir: str = option(
        "/etc/nginx/client_ca",
        "--client-ca-dir",
        "CLIENT_CA_DIR",
        "folder of CA files (PEM): `<host>` makes that host require a client certificate it signed (HTTP: "
        "redirect or 403)",
    )
    proxy_conf: str = option(
        "/etc/nginx/proxy.conf",
        "--proxy-conf",
        "PROXY_CONF",
        "when this file exists it replaces the companion's proxy header snippet in every proxied location",
    )
    server_tokens: str = option(
        "",
        "--server-tokens",
        "SERVER_TOKENS",
        "nginx's server_tokens in the companion's servers: on, off or build; empty: nginx.conf's",
    )
    log_json: bool = option(
        False,
        "--log-json",
        "LOG_JSON",
        "nginx's access log as one JSON object per request, in ACCESS_LOG_PATH (nginx-proxy's name)",
    )
    disable_access_logs: bool = option(
        False,
        "--disable-access-logs",
        "DISABLE_ACCESS_LOGS",
        "no access log for the companion's servers (nginx-proxy's name; wins over LOG_JSON)",
    )
    access_log: str = option(
        "/var/log/nginx/access.log",
        "--access-log-path",
        "ACCESS_LOG_PATH",
        "the file LOG_JSON writes to, as nginx sees it",
    )
    resolvers: Resolvers = option(
        (),
        "--resolvers",
        "RESOLVERS",
        "nginx's `resolver`: IP addresses (optionally IP:port, [IPv6]:port), separated by spaces or commas",
    )
    cluster_listen: str = option(
        "",
        "--cluster-listen",
        "CLUSTER_LISTEN",
        "controller (Swarm): IP:PORT where agents fetch the configuration over mutual TLS (`0.0.0.0:8443`); "
        "set, nginx is the agents' and nothing is applied locally; empty: off",
    )
    cluster_secret_file: str = option(
        "",
        "--cluster-secret-file",
        "CLUSTER_SECRET_FILE",
        "the controller secret (controller) or the agent secret (agent), made by `companion cluster-secret`; "
        "empty: /run/secrets/companion_controller or /run/secrets/companion_agent",
    )
    controller_url: str = option(
        "https://companion:8443",
        "--controller-url",
        "CONTROLLER_URL",
        "agent: the controller's cluster address, https://HOST:PORT",
    )
    agent_state_dir: str = option(
        "/var/lib/companion-agent",
        "--agent-state-dir",
        "AGENT_STATE_DIR",
        "agent: where it keeps the generation it serves (a volume, beside the conf and certs dirs)",
    )
    node_name: str = option("", "--node-name", "NODE_NAME", "agent: the name it reports (empty: the host name)")


@dataclass(frozen=True)
class Option:
    """One setting as the command line, the environment and the docs know it."""

    name: str  # the attribute of Settings
    kind: str  # its declared type as written, which picks the parser for its text
    flag: str
    env: str
    help: str


OPTIONS: tuple[Option, ...] = tuple(Option(f.name, str(f.type), **f.metadata) for f in fields(Options))
ENV_NAMES = frozenset(o.env for o in OPTIONS)

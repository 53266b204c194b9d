"""The companion's own settings, declared as data (command-line flag, environment name, Settings field,
help): settings/ loads and documents them from this table, and core/variables tells them apart from a
container's variables with it."""

from __future__ import annotations

# flag, env, field, help
OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--conf-dir", "CONF_DIR", "conf_dir", "where generated nginx files go"),
    ("--webroot", "ACME_WEBROOT", "webroot", "folder nginx serves /.well-known/acme-challenge/ from"),
    ("--certs-dir", "CERTS_DIR", "certs_dir", "certificate store (certbot's config dir layout)"),
    ("--http-port", "HTTP_PORT", "http_port", "port nginx listens on for HTTP"),
    ("--https-port", "HTTPS_PORT", "https_port", "port nginx listens on for HTTPS"),
    ("--reload", "NGINX_RELOAD", "reload", "'docker' to SIGHUP the nginx container(s), else a host command"),
    (
        "--nginx-test",
        "NGINX_TEST",
        "nginx_test",
        "'docker' to exec nginx -t in the nginx container, else a host command",
    ),
    ("--nginx-container", "NGINX_PROXY_CONTAINER", "nginx_container", "name or id of the nginx container"),
    ("--default-email", "DEFAULT_EMAIL", "default_email", "ACME account email when a container names none"),
    ("--acme-server", "ACME_CA_URI", "acme_server", "ACME directory URL"),
    (
        "--acme-staging-server",
        "ACME_STAGING_URI",
        "acme_staging_server",
        "ACME directory a container's LETSENCRYPT_TEST/ACME_TEST=true selects",
    ),
    (
        "--allowed-acme-servers",
        "ACME_CA_URIS_ALLOWED",
        "allowed_acme_servers",
        "comma list of further ACME directory URLs a container may name in ACME_CA_URI",
    ),
    ("--ca-bundle", "CA_BUNDLE", "ca_bundle", "CA file to trust the ACME server's TLS"),
    ("--key-type", "KEY_TYPE", "key_type", "ecdsa or rsa"),
    ("--rsa-key-size", "RSA_KEY_SIZE", "rsa_key_size", "2048, 3072 or 4096"),
    (
        "--renew-before",
        "RENEW_BEFORE_DAYS",
        "renew_before_days",
        "renew when fewer days are left (0: when a third of the lifetime is left)",
    ),
    ("--acme-retry-base", "ACME_RETRY_BASE", "acme_retry_base", "seconds before the first retry of a failed order"),
    ("--allowed-domains", "ALLOWED_DOMAINS", "allowed_domains", "comma list of glob patterns names must match"),
    (
        "--trust-image-labels",
        "TRUST_IMAGE_LABELS",
        "image_trust",
        "what a container's image may set: 'routing' (only VIRTUAL_HOST[_MULTIPORTS]/PORT/PROTO/PATH/DEST), "
        "'all' or 'none'",
    ),
    (
        "--domain-owners",
        "DOMAIN_OWNERS",
        "domain_owners",
        "comma list of PATTERN=project:NAME or PATTERN=label:KEY=VALUE: only those containers may claim the names",
    ),
    ("--self-check", "ACME_SELF_CHECK", "self_check", "fetch a test token through nginx before an HTTP-01 order"),
    (
        "--acme-challenge",
        "ACME_CHALLENGE",
        "acme_challenge",
        "http-01, or dns-01 (needs --dns-plugin); a container's ACME_CHALLENGE overrides it",
    ),
    (
        "--dns-plugin",
        "ACME_DNS_PLUGIN",
        "dns_plugin",
        "certbot DNS plugin for DNS-01 and wildcard names: dns-rfc2136, dns-cloudflare, dns-route53, "
        "dns-digitalocean or one a derived image adds (see DNS-01)",
    ),
    (
        "--dns-credentials",
        "ACME_DNS_CREDENTIALS",
        "dns_credentials",
        "the plugin's credentials file (a Docker secret; not readable by others); dns-route53 reads AWS_* instead",
    ),
    (
        "--dns-propagation",
        "ACME_DNS_PROPAGATION_SECONDS",
        "dns_propagation_seconds",
        "seconds the plugin waits for its TXT record to reach every DNS server before validation "
        "(-1: the plugin's default)",
    ),
    (
        "--default-host",
        "DEFAULT_HOST",
        "default_host",
        "host whose site answers names no container claims (over HTTPS once it has a real certificate); else 503",
    ),
    (
        "--default-root",
        "DEFAULT_ROOT",
        "default_root",
        "what `/` answers on a host whose containers claim only sub-paths: a status code, a redirect code and "
        "target (`301 $scheme://$host/app/`), or `none` for nginx's own root",
    ),
    (
        "--enable-http-on-missing-cert",
        "ENABLE_HTTP_ON_MISSING_CERT",
        "http_on_missing_cert",
        "serve an HTTPS_METHOD=redirect site over HTTP until its certificate exists; false: HTTP answers 503 "
        "until then (the ACME challenge still works)",
    ),
    ("--heartbeat-file", "HEARTBEAT_FILE", "heartbeat_file", "touched by every loop pass, read by 'check'"),
    ("--log-level", "LOG_LEVEL", "log_level", "DEBUG, INFO, WARNING or ERROR"),
    (
        "--trust-downstream-proxy",
        "TRUST_DOWNSTREAM_PROXY",
        "trust_downstream_proxy",
        "pass on incoming X-Forwarded-Proto/Host/Port/Ssl (only behind another proxy: clients could forge them)",
    ),
    (
        "--ssl-policy",
        "SSL_POLICY",
        "ssl_policy",
        "Mozilla-Modern (TLS 1.3 only), Mozilla-Intermediate (TLS 1.2/1.3) or Mozilla-Old (TLS 1.0-1.3)",
    ),
    ("--enable-ipv6", "ENABLE_IPV6", "enable_ipv6", "listen on [::] too, with the same ports"),
    (
        "--external-http-port",
        "EXTERNAL_HTTP_PORT",
        "external_http_port",
        "port clients reach HTTP on, sent as X-Forwarded-Port (0: HTTP_PORT)",
    ),
    (
        "--external-https-port",
        "EXTERNAL_HTTPS_PORT",
        "external_https_port",
        "port clients reach HTTPS on (published 8443:443), carried by redirects and X-Forwarded-Port (0: HTTPS_PORT)",
    ),
    (
        "--non-get-redirect",
        "NON_GET_REDIRECT",
        "non_get_redirect",
        "redirect code to HTTPS for methods other than GET and HEAD: 301, 302, 307 or 308 (307/308 keep the method)",
    ),
    (
        "--status-listen",
        "STATUS_LISTEN",
        "status_listen",
        "HOST:PORT for the status page, /status.json, /metrics and /healthz (`0.0.0.0:8081` in the image); empty: off",
    ),
    (
        "--status-auth",
        "STATUS_AUTH",
        "status_auth",
        "htpasswd file (bcrypt: htpasswd -B) whose users may read the status endpoint; /healthz stays open",
    ),
    (
        "--status-credentials",
        "STATUS_CREDENTIALS",
        "status_credentials",
        "file holding `user:password` of a STATUS_AUTH user: `explain` and `certs` send it when they ask the service",
    ),
    (
        "--control-socket",
        "CONTROL_SOCKET",
        "control_socket",
        "unix socket where the service takes `companion renew`'s orders (its folder is made 0700): keep it out of "
        "every volume another container mounts",
    ),
    (
        "--renew-limit-minutes",
        "RENEW_LIMIT_MINUTES",
        "renew_limit_minutes",
        "`companion renew` (forced or not) may make the service order each certificate once in this many minutes",
    ),
    (
        "--renew-limit-per-hour",
        "RENEW_LIMIT_PER_HOUR",
        "renew_limit_per_hour",
        "and this many orders in all in any hour",
    ),
    ("--notify", "NOTIFY_URLS", "notify_urls", "comma list of Apprise URLs that get alerts (see Alerts)"),
    (
        "--notify-expiry-days",
        "NOTIFY_EXPIRY_DAYS",
        "notify_expiry_days",
        "alert once a day when a certificate in use has fewer days left (0: never)",
    ),
    (
        "--log-format",
        "LOG_FORMAT",
        "log_format",
        "text or json: the companion's own log (json: one object per line); anything else is nginx-proxy's "
        "meaning, nginx's access log format (written to ACCESS_LOG_PATH)",
    ),
    (
        "--log-format-escape",
        "LOG_FORMAT_ESCAPE",
        "log_format_escape",
        "escaping of variables in a custom LOG_FORMAT: default, json or none",
    ),
    (
        "--vhost-dir",
        "VHOST_DIR",
        "vhost_dir",
        "folder of per-host nginx files: `<host>` (else `default`) goes into the host's servers, `<host>_location` "
        "(else `default_location`) into its locations",
    ),
    (
        "--htpasswd-dir",
        "HTPASSWD_DIR",
        "htpasswd_dir",
        "folder of htpasswd files: `<host>` switches on basic auth for that host (the ACME challenge stays open)",
    ),
    (
        "--client-ca-dir",
        "CLIENT_CA_DIR",
        "client_ca_dir",
        "folder of CA files (PEM): `<host>` makes that host require a client certificate it signed "
        "(HTTP: redirect or 403)",
    ),
    (
        "--proxy-conf",
        "PROXY_CONF",
        "proxy_conf",
        "when this file exists it replaces the companion's proxy header snippet in every proxied location",
    ),
    (
        "--server-tokens",
        "SERVER_TOKENS",
        "server_tokens",
        "nginx's server_tokens in the companion's servers: on, off or build; empty: nginx.conf's",
    ),
    (
        "--log-json",
        "LOG_JSON",
        "log_json",
        "nginx's access log as one JSON object per request, in ACCESS_LOG_PATH (nginx-proxy's name)",
    ),
    (
        "--disable-access-logs",
        "DISABLE_ACCESS_LOGS",
        "disable_access_logs",
        "no access log for the companion's servers (nginx-proxy's name; wins over LOG_JSON)",
    ),
    ("--access-log-path", "ACCESS_LOG_PATH", "access_log", "the file LOG_JSON writes to, as nginx sees it"),
    (
        "--resolvers",
        "RESOLVERS",
        "resolvers",
        "nginx's `resolver`: IP addresses (optionally IP:port, [IPv6]:port), separated by spaces or commas",
    ),
    (
        "--cluster-listen",
        "CLUSTER_LISTEN",
        "cluster_listen",
        "controller (Swarm): IP:PORT where agents fetch the configuration over mutual TLS (`0.0.0.0:8443`); "
        "set, nginx is the agents' and nothing is applied locally; empty: off",
    ),
    (
        "--cluster-secret-file",
        "CLUSTER_SECRET_FILE",
        "cluster_secret_file",
        "the controller secret (controller) or the agent secret (agent), made by `companion cluster-secret`; "
        "empty: /run/secrets/companion_controller or /run/secrets/companion_agent",
    ),
    (
        "--controller-url",
        "CONTROLLER_URL",
        "controller_url",
        "agent: the controller's cluster address, https://HOST:PORT",
    ),
    (
        "--agent-state-dir",
        "AGENT_STATE_DIR",
        "agent_state_dir",
        "agent: where it keeps the generation it serves (a volume, beside the conf and certs dirs)",
    ),
    ("--node-name", "NODE_NAME", "node_name", "agent: the name it reports (empty: the host name)"),
)

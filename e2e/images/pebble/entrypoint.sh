#!/bin/sh
# Start Pebble with a per-volume CA for its own listener, or run any other command as given.
#
#   pebble [pebble flags...]   create $PEBBLE_CA_DIR/{ca.pem,cert.pem,key.pem} if missing, then run pebble
#   pebble-challtestsrv ...    (or anything else) exec'd unchanged
#
# Environment: PEBBLE_CA_DIR (default /pebble-ca), PEBBLE_CERT_VALIDITY (seconds, default 7776000 = 90 days),
# PEBBLE_DNS (host:port handed to -dnsserver), PEBBLE_TLS_SANS (extra comma-separated DNS names/IPs for
# the listener certificate). PEBBLE_VA_NOSLEEP, PEBBLE_WFE_NONCEREJECT etc. are read by pebble itself.
set -eu

if [ "$#" -eq 0 ]; then
    set -- pebble
fi
case "$1" in
    -*) set -- pebble "$@" ;;
esac
if [ "$1" != "pebble" ]; then
    exec "$@"
fi
shift

ca_dir="${PEBBLE_CA_DIR:-/pebble-ca}"
validity="${PEBBLE_CERT_VALIDITY:-7776000}"
case "$validity" in
    ''|*[!0-9]*) echo "pebble-entrypoint: PEBBLE_CERT_VALIDITY must be a number of seconds, got '$validity'" >&2
                 exit 64 ;;
esac

# Listener certificate: the CA key lives only in a temporary directory and is destroyed after signing,
# so nobody (not even this container) can mint further certificates under that CA.
needs_new() {
    [ -s "$ca_dir/ca.pem" ] && [ -s "$ca_dir/cert.pem" ] && [ -s "$ca_dir/key.pem" ] || return 0
    openssl x509 -in "$ca_dir/cert.pem" -noout -checkend 86400 >/dev/null 2>&1 || return 0
    return 1
}

if needs_new; then
    mkdir -p "$ca_dir"
    work="$(mktemp -d "$ca_dir/.new.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    umask 077
    sans="DNS:pebble,DNS:localhost,IP:127.0.0.1,IP:::1"
    old_ifs="$IFS"; IFS=','
    for name in ${PEBBLE_TLS_SANS:-}; do
        case "$name" in
            '') ;;
            *:*) sans="$sans,IP:$name" ;;
            *[!0-9.]*) sans="$sans,DNS:$name" ;;
            *) sans="$sans,IP:$name" ;;
        esac
    done
    IFS="$old_ifs"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=Pebble listener CA $(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=pebble" \
        -keyout "$work/key.pem" -out "$work/req.csr" 2>/dev/null
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=$sans" > "$work/ext.cnf"
    openssl x509 -req -in "$work/req.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
        -days 825 -extfile "$work/ext.cnf" -out "$work/cert.pem" 2>/dev/null
    chmod 0644 "$work/ca.pem" "$work/cert.pem"
    chmod 0600 "$work/key.pem"
    # ca.pem last: other containers may wait for it to appear.
    mv -f "$work/key.pem" "$ca_dir/key.pem"
    mv -f "$work/cert.pem" "$ca_dir/cert.pem"
    mv -f "$work/ca.pem" "$ca_dir/ca.pem"
    rm -rf "$work"
    trap - EXIT
    echo "pebble-entrypoint: new listener CA in $ca_dir/ca.pem (names: $sans)" >&2
fi

config="$(mktemp /tmp/pebble-config.XXXXXX.json)"
cat > "$config" <<JSON
{
  "pebble": {
    "listenAddress": "0.0.0.0:14000",
    "managementListenAddress": "0.0.0.0:15000",
    "certificate": "$ca_dir/cert.pem",
    "privateKey": "$ca_dir/key.pem",
    "httpPort": 80,
    "tlsPort": 443,
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false,
    "certificateValidityPeriod": $validity
  }
}
JSON

if [ -n "${PEBBLE_DNS:-}" ]; then
    set -- -dnsserver "$PEBBLE_DNS" "$@"
fi
exec pebble -config "$config" "$@"

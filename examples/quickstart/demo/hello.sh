#!/bin/sh
# Write the hello page ($GREETING and this container's name) and serve it with busybox httpd on :8080.
# httpd runs as a child so that this shell (PID 1, where signals without a handler are ignored) can
# pass on `docker stop`'s SIGTERM and the container stops at once instead of after the kill timeout.
set -eu
cat > /srv/www/index.html <<HTML
<!doctype html>
<html><head><meta charset="utf-8"><title>companion quickstart</title></head>
<body><h1>${GREETING}</h1><p>served by container <code>$(hostname)</code> over HTTPS.</p></body></html>
HTML
busybox httpd -f -p 8080 -h /srv/www &
trap 'kill -TERM $!; exit 0' TERM INT
wait $!

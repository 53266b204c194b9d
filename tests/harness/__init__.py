"""The one test kit, used by every tier (unit, integration, e2e) and by bench/.

Real parts: dockerd (dockerd.start_dockerd, also for Swarm nodes), the app image, nginx (nginx: a running
HostNginx and `nginx -t` layouts), nginx in a container, Pebble, BIND 9, a companion process, a Swarm.
Kit: wait.wait_until (the one way to wait), certs (the one certificate factory), containers (the one
ContainerInfo factory), fleet/echo/hostfiles/clock/cluster (helpers shared by test modules, which never
import each other).
"""

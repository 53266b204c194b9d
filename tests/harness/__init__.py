"""Reusable helpers that start the real parts the tests need: dockerd, an app image, nginx, Pebble."""

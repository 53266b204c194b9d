"""Automatic HTTPS sites for labelled Docker containers: nginx virtual hosts and certbot certificates."""

"""Running the server as an operator would: start-up checks, logs, metrics, admin, systemd."""

"""isolate as an OCI runtime: runc's command line over isolate's own sandbox code."""

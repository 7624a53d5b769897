"""Research probes: one-off measurements behind findings in results/<suite>/README.md (not part of
the harness a user runs)."""

"""The lab side: pull client, session report, study models and the analysis they share (see docs/architecture.md)."""

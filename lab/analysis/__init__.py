"""Session and study analyses behind ``dyadsync report`` and ``dyadsync study`` (see docs/analysis.md)."""

"""These tests need Python 3.12 and flock-core; `make test-flock-core` builds that environment."""

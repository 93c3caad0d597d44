"""What every tier of the tests shares: probes of the host (``host``) and the commands the
tests run (``commands``).  tests/conftest.py puts this directory's parent on sys.path, so a
test imports ``from support.host import ...``."""

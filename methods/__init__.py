"""Method adapters, one file each. Registered in bench/catalog.py; the interface
is documented in bench/runner.py."""

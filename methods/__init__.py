"""Method adapters, one file each. Registered in bench/spec/catalog.py; the interface
is documented in bench/train/runner.py."""

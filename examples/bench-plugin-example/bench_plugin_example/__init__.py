"""An example overopt-bench plugin (see docs/byo-method.md in overopt-bench)."""

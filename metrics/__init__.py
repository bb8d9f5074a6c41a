"""Reward models, one file per reward family. See metrics/base.py for the interface."""

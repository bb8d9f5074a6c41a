"""Prompt sets (data): *.txt, one prompt per line. A package only so that pip installs them."""

"""Sweep specifications shipped with mlpmem (package data)."""

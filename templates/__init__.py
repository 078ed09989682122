"""Shipped prompt templates (package data)."""

"""Weights shipped with derain, installed as package data (see manifest.json)."""

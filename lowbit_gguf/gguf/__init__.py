"""GGUF: conversion, the lowbit type table, writing and reading."""

from lowbit_gguf.gguf.types import register_with_gguf

# Importing the package is enough for gguf's reader and writer to know the lowbit types.
register_with_gguf()

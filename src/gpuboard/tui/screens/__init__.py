"""Screens pushed over the board: help, and (later) the operator's dialogs."""

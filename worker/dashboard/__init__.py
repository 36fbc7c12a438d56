"""The live dashboard page and its server."""

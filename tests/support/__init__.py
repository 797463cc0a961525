"""Test helpers that the package does not ship (imported as ``support``: pytest puts tests/ on
``sys.path``)."""

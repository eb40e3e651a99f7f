"""Glue shared by Chinwag's server programs: settings, Redis keys, logging, backoff."""

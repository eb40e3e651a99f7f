"""Presence: unique usernames across the cluster, and freeing the names of dead gateways."""

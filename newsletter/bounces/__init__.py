"""Bounces, complaints and provider events: what comes back after the 250.

Light on purpose (the CLI imports it): the parser, sources and webhooks are
imported from their own modules by whoever needs them.
"""

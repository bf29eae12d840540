"""Jinja templates for the cards and Space files that repair publishes."""
